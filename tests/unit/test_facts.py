"""A start answer that carries pids makes the run running at once; the
`proc.started` event that follows changes nothing; without pids in the answer
the event does it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from apsis_common import protocol as p
from apsis_common.states import State
from apsis_server.agents.facts import Facts
from apsis_server.engine.ports import Settings
from apsis_server.store.base import Changes
from apsis_server.store.sqlite import SqliteStore
from tests.engine_kit import QuietAgents, new_engine
from tests.harness import run_async


async def no_restarts(agent_id: str, epoch: int) -> None:
    raise AssertionError(f"agent {agent_id} restarted ({epoch}): no agent does here")


def test_running_from_the_start_answer_or_else_from_the_event(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = SqliteStore(tmp_path / "apsis.db")
        agents = QuietAgents()
        engine = new_engine(store, {"j": "program: {type: program, argv: [/bin/true]}"}, agents)
        facts = Facts(engine, no_restarts)
        answered, evented = engine.schedule("j", {}), engine.schedule("j", {})
        assert [engine.get(r.run_id).state for r in (answered, evented)] == [State.STARTING] * 2
        procs: dict[str, str] = {}  # run id -> proc id
        for start in agents.starts:
            run = engine.run_for(start.proc_id)
            assert run is not None
            procs[run.run_id] = start.proc_id
        now = time.time()
        facts.answered(
            "local",
            [
                p.StartResult(
                    procs[answered.run_id], p.StartStatus.ACCEPTED, pid=10, pgid=10, start_time=now
                ),
                p.StartResult(procs[evented.run_id], p.StartStatus.ACCEPTED),  # still starting
            ],
        )
        assert engine.get(answered.run_id).state == State.RUNNING
        assert engine.get(evented.run_id).state == State.STARTING
        assert store.meta(answered.run_id)["pid"] == 10  # committed with the answer

        events = (
            p.ProcStarted(procs[answered.run_id], 10, 10, now),
            p.ProcStarted(procs[evented.run_id], 11, 11, now + 0.01),
        )
        batch = p.EventBatch("local", 1, tuple(p.Envelope(i + 1, e) for i, e in enumerate(events)))
        assert await facts.apply("local", batch) == 2
        for run_id, pid in ((answered.run_id, 10), (evented.run_id, 11)):
            assert engine.get(run_id).state == State.RUNNING
            running = [e for e in store.log(run_id) if e.state == State.RUNNING]
            assert [e.message for e in running] == [f"running as pid {pid}"]
            meta = store.meta(run_id)
            assert (meta["pid"], meta["pgid"], meta["agent_id"]) == (pid, pid, "local")
        store.close()

    run_async(scenario)


def test_elapsed_is_measured_by_the_agent_clock(tmp_path: Path) -> None:
    """The server learns of a start a little after it happened: a program that
    ends at once must not show a negative elapsed time."""

    async def scenario() -> None:
        store = SqliteStore(tmp_path / "apsis.db")
        agents = QuietAgents()
        engine = new_engine(store, {"j": "program: {type: program, argv: [/bin/true]}"}, agents)
        facts = Facts(engine, no_restarts)
        run = engine.schedule("j", {})
        proc_id = agents.starts[-1].proc_id
        started = time.time() - 5.0  # the answer comes late, well after the start
        answer = p.StartResult(proc_id, p.StartStatus.ACCEPTED, pid=7, pgid=7, start_time=started)
        facts.answered("local", [answer])
        exit = p.ExitInfo(0, 0, None, False, {}, started + 0.002)
        batch = p.EventBatch("local", 1, (p.Envelope(1, p.ProcExited(proc_id, exit, 0)),))
        await facts.apply("local", batch)
        assert engine.get(run.run_id).state == State.SUCCESS
        assert store.meta(run.run_id)["elapsed"] == pytest.approx(0.002, abs=1e-5)
        store.close()

    run_async(scenario)


@pytest.mark.parametrize(
    ("sent", "reads", "stored", "omitted"),
    [
        # Nothing came as events: the head and the tail are fetched, not the middle.
        ((), [(0, 10), (90, 100)], [(0, 10), (90, 100)], [10, 90]),
        # An agent from before the head rule sent 15 bytes while the program ran.
        (((0, 15),), [(90, 100)], [(0, 15), (90, 100)], [15, 90]),
        # All of the head and tail came: nothing is fetched.
        (((0, 10), (90, 100)), [], [(0, 10), (90, 100)], [10, 90]),
    ],
)
def test_what_the_exit_fetches_stays_within_the_cap(
    tmp_path: Path,
    sent: tuple[tuple[int, int], ...],
    reads: list[tuple[int, int]],
    stored: list[tuple[int, int]],
    omitted: list[int],
) -> None:
    """The server fetches what the events left out when a program ends: at most the
    head and the tail of `output.max_bytes`, whatever the agent sent before."""

    async def scenario() -> None:
        store = SqliteStore(tmp_path / "apsis.db")
        agents = QuietAgents()
        jobs = {"j": "program: {type: program, argv: [/bin/true]}"}
        engine = new_engine(store, jobs, agents, Settings(output_max=20))
        run = engine.schedule("j", {})
        proc_id = agents.starts[-1].proc_id
        full = bytes(range(100))
        agents.files[proc_id] = full
        outputs = [p.ProcOutput(proc_id, 1, start, full[start:stop]) for start, stop in sent]
        exit = p.ExitInfo(0, 0, None, False, {}, time.time())
        events: list[p.Event] = [*outputs, p.ProcExited(proc_id, exit, len(full))]
        batch = p.EventBatch("local", 1, tuple(p.Envelope(i + 1, e) for i, e in enumerate(events)))
        await Facts(engine, no_restarts).apply("local", batch)
        assert engine.get(run.run_id).state == State.SUCCESS
        assert agents.reads == reads
        assert store.output(run.run_id, 0, 100) == b"".join(full[a:b] for a, b in stored)
        assert store.meta(run.run_id)["output_omitted"] == omitted
        store.close()

    run_async(scenario)


@pytest.mark.parametrize(
    ("stored_ack", "stored", "batch_instance", "batch_acked", "events", "ack", "reconciled"),
    [
        # The same sequence; the agent missed the last ack and resends: duplicates.
        (5, "aa", "aa", 2, (3, 4, 5), 5, False),
        # A new sequence (its state was wiped): numbered from 1 again, followed.
        (5, "aa", "bb", 0, (1, 2), 2, True),
        # The agent holds a higher ack (the server's store was restored): skip forward.
        (5, "aa", "aa", 9, (10, 11), 11, True),
        # ... or the server's state is new, the agent's not.
        (0, "", "aa", 9, (10,), 10, True),
        # A first batch from a new agent: taken as it is.
        (0, "", "aa", 0, (1,), 1, False),
        # An agent older than sequence names: as before (a gap is waited on).
        (5, "", "", 9, (10,), 5, False),
    ],
)
def test_both_sides_counts_are_checked_on_every_batch(
    tmp_path: Path,
    stored_ack: int,
    stored: str,
    batch_instance: str,
    batch_acked: int,
    events: tuple[int, ...],
    ack: int,
    reconciled: bool,
) -> None:
    restarts: list[int] = []

    async def on_started(agent_id: str, epoch: int) -> None:
        restarts.append(epoch)

    async def scenario() -> None:
        store = SqliteStore(tmp_path / "apsis.db")
        instances = {"local": stored} if stored else {}
        store.write(Changes(acks={"local": stored_ack}, instances=instances))
        engine = new_engine(store, {}, QuietAgents())
        facts = Facts(engine, on_started)
        batch = p.EventBatch(
            "local",
            3,
            tuple(p.Envelope(seq, p.ProcOutput(f"r{seq}.1", 1, 0, b"x")) for seq in events),
            instance=batch_instance,
            acked=batch_acked,
        )
        assert await facts.apply("local", batch) == ack
        assert store.ack("local") == ack
        assert store.instance("local") == (batch_instance or stored)
        store.close()

    run_async(scenario)
    assert bool(restarts) == reconciled
