"""One contract, run against every RunStore: memory, SQLite and PostgreSQL behave the same."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from apsis_common.states import State
from apsis_server.core.bound import BoundProcess
from apsis_server.core.runs import LogEntry, Run
from apsis_server.store.base import STDERR, STDOUT, Changes, Chunk, OutputName, RunFilter, RunStore
from apsis_server.store.memory import MemoryStore
from apsis_server.store.postgres import PostgresStore
from apsis_server.store.sqlite import SqliteStore


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RunStore]:
    s: RunStore
    if request.param == "memory":
        s = MemoryStore()
    elif request.param == "sqlite":
        s = SqliteStore(tmp_path / "a.db")
    else:  # a fresh database of the session's cluster (tests/conftest.py)
        s = PostgresStore(request.getfixturevalue("postgres_url"))
    yield s
    s.close()


def _run(n: int, job: str = "a", state: State = State.SUCCESS, **kw: object) -> Run:
    return Run(
        run_id=f"r{n}",
        job_id=job,
        args=kw.pop("args", {}),  # type: ignore[arg-type]
        state=state,
        schedule_time=float(n),
        times={"scheduled": float(n)},
        labels=kw.pop("labels", ()),  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )


def test_write_and_read_back(store: RunStore) -> None:
    run = _run(1, program=BoundProcess(("x",)), proc_id="r1.1", agent_id="local")
    store.write(
        Changes(
            runs={"r1": run},
            log=[LogEntry("r1", 1.0, "scheduled", State.SCHEDULED), LogEntry("r1", 2.0, "note")],
            meta={"r1": {"pid": 5}},
            acks={"local": 7},
        )
    )
    store.write(Changes(meta={"r1": {"exit_code": 0}}))
    assert store.get("r1") == run
    assert store.get("r2") is None
    assert [e.message for e in store.log("r1")] == ["scheduled", "note"]
    assert store.log("r1")[0].state == State.SCHEDULED
    assert store.meta("r1") == {"pid": 5, "exit_code": 0}
    assert store.ack("local") == 7 and store.ack("other") == 0
    assert store.max_run_number() == 1


def test_text_beyond_ascii_reads_back_and_matches(store: RunStore) -> None:
    """Labels, messages, programs and metadata in any script (and the control
    characters JSON must escape) come back as written; a label filter finds them."""
    odd = "équipe ☃ 日本 \u2028 \t\x01"
    lone = "half a pair \udc80"
    run = _run(1, labels=(odd, "x"), message=odd, program=BoundProcess((odd, lone)), proc_id="r1.1")
    store.write(Changes(runs={"r1": run, "r2": _run(2, labels=("x",))}, meta={"r1": {"note": odd}}))
    store.write(Changes(meta={"r1": {"elapsed": 0.25, "rusage": {"utime": 1e-06}}}))
    assert store.get("r1") == run
    assert store.meta("r1") == {"note": odd, "elapsed": 0.25, "rusage": {"utime": 1e-06}}
    assert [r.run_id for r in store.query(RunFilter(label=odd))] == ["r1"]


def test_unfinished_and_updates(store: RunStore) -> None:
    store.write(Changes(runs={"r1": _run(1, state=State.RUNNING), "r2": _run(2)}))
    assert [r.run_id for r in store.unfinished()] == ["r1"]
    store.write(Changes(runs={"r1": _run(1, state=State.FAILURE)}))
    assert store.unfinished() == []
    assert store.get("r1") is not None and store.get("r1").state == State.FAILURE  # type: ignore[union-attr]


def test_output_by_range(store: RunStore) -> None:
    store.write(Changes(output=[Chunk("r1", 0, b"hello "), Chunk("r1", 6, b"world\x00\xff")]))
    assert store.output_length("r1") == 13
    assert store.output("r1") == b"hello world\x00\xff"
    assert store.output("r1", 3, 8) == b"lo wo"
    assert store.output("r1", 6) == b"world\x00\xff"
    assert store.output("r2") == b""


def test_output_with_the_middle_left_out(store: RunStore) -> None:
    store.write(Changes(output=[Chunk("r1", 0, b"head"), Chunk("r1", 10, b"tail")]))
    assert store.output_length("r1") == 14
    assert store.output("r1") == b"headtail"
    assert store.output("r1", 2, 12) == b"adta"
    assert store.output("r1", 11) == b"ail"


def test_stdout_and_stderr_apart_and_merged(store: RunStore) -> None:
    """Each stream by its own offsets; the merged view by the places the engine gave
    (a repeated chunk, as an agent's resent event, changes nothing)."""
    out, err, merged = OutputName.STDOUT, OutputName.STDERR, OutputName.MERGED
    chunks = [
        Chunk("r1", 0, b"out1 ", STDOUT),
        Chunk("r1", 0, b"ERR1 ", STDERR, 5),
        Chunk("r1", 5, b"out2 ", STDOUT, 10),
        Chunk("r1", 5, b"ERR2", STDERR, 15),
    ]
    store.write(Changes(output=chunks))
    store.write(Changes(output=chunks[1:2]))
    assert store.output("r1", name=out) == b"out1 out2 "
    assert store.output("r1", name=err) == b"ERR1 ERR2"
    assert store.output("r1") == store.output("r1", name=merged) == b"out1 ERR1 out2 ERR2"
    lengths = [store.output_length("r1", n) for n in (out, err, merged)]
    assert lengths == [10, 9, 19]
    assert store.output("r1", 3, 12) == b"1 ERR1 ou"
    assert store.output("r1", 2, 7, err) == b"R1 ER"
    # A run with stdout alone (merged with stderr, or from before): all three agree
    # but stderr, which is empty.
    store.write(Changes(output=[Chunk("r2", 0, b"both")]))
    assert store.output("r2", name=out) == store.output("r2") == b"both"
    assert store.output("r2", name=err) == b"" and store.output_length("r2", err) == 0


def test_query_filters_and_keyset_pages(store: RunStore) -> None:
    runs = {
        f"r{n}": _run(
            n,
            job="a" if n % 2 else "b",
            state=State.FAILURE if n % 3 == 0 else State.SUCCESS,
            args={"d": str(n % 4)},
            labels=("x",) if n > 5 else (),
        )
        for n in range(1, 11)
    }
    store.write(Changes(runs=runs))

    def ids(f: RunFilter) -> list[str]:
        return [r.run_id for r in store.query(f)]

    assert ids(RunFilter(limit=3)) == ["r10", "r9", "r8"]
    assert ids(RunFilter(limit=3, before="r8")) == ["r7", "r6", "r5"]
    assert ids(RunFilter(job_id="a")) == ["r9", "r7", "r5", "r3", "r1"]
    assert ids(RunFilter(states=(State.FAILURE,))) == ["r9", "r6", "r3"]
    assert ids(RunFilter(label="x", job_id="b")) == ["r10", "r8", "r6"]
    assert ids(RunFilter(args={"d": "1"})) == ["r9", "r5", "r1"]
    assert ids(RunFilter(since=3.0, until=5.0)) == ["r4", "r3"]


def test_cursors_and_identities(store: RunStore) -> None:
    store.write(
        Changes(
            runs={"r1": _run(1, state=State.SCHEDULED, schedule_key="k")},
            cursors={("a", "k"): 1.0},
        )
    )
    assert store.cursors() == {("a", "k"): 1.0}
    assert store.scheduled_identities("a", 0.0) == {"r1": (1.0, "{}")}
    assert store.scheduled_identities("a", 2.0) == {}


def test_sqlite_survives_reopen(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "a.db")
    store.write(Changes(runs={"r5": _run(5)}, output=[Chunk("r5", 0, b"x")]))
    store.close()
    again = SqliteStore(tmp_path / "a.db")
    assert again.max_run_number() == 5 and again.output("r5") == b"x"
    assert again.schema_version() >= 1
    again.close()


def test_a_withdrawn_run_leaves_its_identity_to_its_replacement(store: RunStore) -> None:
    """A reload withdraws a scheduled run and plans the same (job, schedule, time)
    again, in one write."""
    store.write(Changes(runs={"r1": _run(1, state=State.SCHEDULED, schedule_key="k")}))
    again = replace(_run(1, state=State.SCHEDULED, schedule_key="k"), run_id="r2")
    store.write(Changes(runs={"r2": again}, deleted={"r1"}))
    assert store.scheduled_identities("a", 0.0) == {"r2": (1.0, "{}")}
    assert store.get("r1") is None


def test_archive_moves_finished_runs_in_chunks(store: RunStore, tmp_path: Path) -> None:
    """Housekeeping's path through the port: candidates by age and by count per job,
    then a move that takes a run's log, metadata and output with it."""
    runs = {f"r{n}": _run(n, job="a" if n % 2 else "b") for n in range(1, 11)}
    runs["r11"] = _run(11, job="a", state=State.RUNNING)
    store.write(
        Changes(
            runs=runs,
            log=[LogEntry(r, 1.0, "done") for r in runs],
            meta={"r1": {"pid": 5}},
            output=[Chunk("r1", 0, b"hello")],
        )
    )
    archive = store.archiver(tmp_path / "archive.db")
    try:
        assert archive.candidates_by_age(5.5, 100) == [1, 2, 3, 4, 5]
        assert archive.candidates_by_age(100.0, 3) == [1, 2, 3]
        assert sorted(archive.thresholds(2)) == [("a", 7), ("b", 6)]
        assert archive.candidates_by_count("a", 7, 10) == [1, 3, 5, 7]
        assert archive.move([1, 2]) == 2
    finally:
        archive.close()
    assert store.get("r1") is None and store.log("r1") == [] and store.meta("r1") == {}
    assert store.output_length("r1") == 0
    assert store.get("r3") is not None
    assert store.counts() == {"success": 8, "running": 1}
    assert store.vacuum_step(16) >= 0 and store.size() >= 0


def test_agent_sequences(store: RunStore) -> None:
    """The event sequence an agent reports in is kept beside its ack."""
    assert store.instance("local") == ""
    store.write(Changes(acks={"local": 4}, instances={"local": "00ab"}))
    store.write(Changes(acks={"local": 9}))
    assert (store.ack("local"), store.instance("local")) == (9, "00ab")
    store.write(Changes(acks={"local": 0}, instances={"local": "00cd"}))
    assert (store.ack("local"), store.instance("local")) == (0, "00cd")
    assert store.instance("other") == ""
