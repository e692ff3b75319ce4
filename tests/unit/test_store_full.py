"""A store that cannot be written (disk full): the engine keeps every change,
answers Unavailable, and writes everything once space returns."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest

from apsis_common import protocol as p
from apsis_common.errors import Unavailable
from apsis_common.states import State
from apsis_server.agents.reconcile import reconcile
from apsis_server.core import lifecycle
from apsis_server.core.catchup import CatchUp
from apsis_server.engine.restore import restore
from apsis_server.store.sqlite import SqliteStore
from tests.engine_kit import QuietAgents, new_engine
from tests.harness import run_async


class NoAgents(QuietAgents):
    def start(self, agent_id: str, proc: p.StartProc) -> None:
        raise AssertionError("nothing starts before its record is durable")


def test_disk_full_keeps_changes_and_recovers(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = SqliteStore(tmp_path / "apsis.db")
        engine = new_engine(store, {"j": "program: {type: no-op}"}, NoAgents())
        first = engine.schedule("j", {})
        db = store._db
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        db.execute(f"PRAGMA max_page_count = {pages}")  # the disk is now full
        with pytest.raises(Unavailable, match="full"):
            for _ in range(50):  # enough to need a new page
                engine.schedule("j", {})
        assert engine.store_error is not None
        db.execute("PRAGMA max_page_count = 1073741823")  # space returns
        engine.commit()
        assert engine.store_error is None
        # Every run the engine holds is in the store, as the engine has it, with its log.
        runs = {r.run_id: r for r in store.unfinished()}
        assert first.run_id in runs and len(runs) == len(engine.runs) > 1
        for run_id, run in engine.runs.items():
            assert runs[run_id].state == run.state == State.RUNNING
            assert [e.state for e in store.log(run_id) if e.state] == [
                State.SCHEDULED,
                State.WAITING,
                State.STARTING,
                State.RUNNING,
            ]
        store.close()

    run_async(scenario)


class CountingStore(SqliteStore):
    writes = 0

    def write(self, changes: Any) -> None:
        self.writes += 1
        super().write(changes)


def test_requests_of_one_loop_turn_share_one_transaction(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = CountingStore(tmp_path / "apsis.db")
        engine = new_engine(store, {"j": "program: {type: no-op}"}, NoAgents())

        async def request() -> str:
            run = engine.schedule("j", {}, commit=False)
            await engine.committed()
            return run.run_id

        run_ids = await asyncio.gather(*(request() for _ in range(8)))
        assert store.writes == 1
        assert {r.run_id for r in store.unfinished()} == set(run_ids)
        # A store that cannot be written fails every request of the turn (→ 503).
        pages = store._db.execute("PRAGMA page_count").fetchone()[0]
        store._db.execute(f"PRAGMA max_page_count = {pages}")
        results = await asyncio.gather(*(request() for _ in range(50)), return_exceptions=True)
        assert all(isinstance(r, Unavailable) for r in results)
        store._db.execute("PRAGMA max_page_count = 1073741823")
        engine.commit()
        assert len(store.unfinished()) == 58
        store.close()

    run_async(scenario)


def test_a_refused_write_keeps_the_changes_too(tmp_path: Path) -> None:
    """A write the store refuses for another reason (here a broken identity
    constraint, which would be a bug) is kept in memory like a full disk's."""

    async def scenario() -> None:
        store = SqliteStore(tmp_path / "apsis.db")
        engine = new_engine(store, {"j": "program: {type: no-op}"}, NoAgents())
        job = engine.jobs["j"]
        for _ in range(2):  # the same (job, schedule, time) twice
            engine.create(job, {}, 4102444800.0, schedule_key="k")
        with pytest.raises(Unavailable, match="UNIQUE"):
            engine.commit()
        assert engine.store_error is not None and len(engine.runs) == 2
        assert store.unfinished() == []  # nothing half-written
        store.close()

    run_async(scenario)


class NoProcs:
    """An agent client whose agent runs nothing (only `info` and `procs` are asked)."""

    instance = ""

    async def info(self) -> p.AgentInfo:
        return p.AgentInfo("local", 1, "v", 1, "u", "h", "b", 0, 0, 0, 10, False, "s1")

    async def procs(self) -> list[p.ProcSummary]:
        return []


def test_reconciling_an_agent_while_the_store_is_full_keeps_its_findings(tmp_path: Path) -> None:
    """An agent (re)connecting while the disk is full is reconciled, not failed: what
    reconciling decided is kept and written (and sent) once space returns."""

    async def scenario() -> None:
        store = SqliteStore(tmp_path / "apsis.db")
        agents = QuietAgents()
        engine = new_engine(store, {"j": "program: {type: program, argv: [/bin/true]}"}, agents)
        run = engine.schedule("j", {})
        assert run.state == State.STARTING and len(agents.starts) == 1
        pages = store._db.execute("PRAGMA page_count").fetchone()[0]
        store._db.execute(f"PRAGMA max_page_count = {pages}")
        for _ in range(50):  # fill the last page, so the next write fails
            with contextlib.suppress(Unavailable):
                engine.note(run.run_id, "x" * 200)
                engine.commit()
        assert engine.store_error is not None
        await reconcile(engine, "local", NoProcs())  # type: ignore[arg-type]
        assert len(agents.starts) == 1, "nothing is sent before it is written"
        store._db.execute("PRAGMA max_page_count = 1073741823")
        engine.commit()
        assert engine.store_error is None
        assert [s.proc_id for s in agents.starts] == [run.proc_id] * 2  # sent again, same id
        store.close()

    run_async(scenario)


def test_a_start_resent_after_a_restart_is_withdrawn_once_the_run_started(
    tmp_path: Path,
) -> None:
    """A server restarted with a run `starting` resends its start; if the agent's
    events say the program started (and ended) before the agent is reconnected, the
    resent start must not reach it: it would run the program a second time (the
    chaos campaign's seed 20261207 did, the agent having forgotten the finished proc)."""

    async def scenario() -> None:
        jobs = {"j": "program: {type: program, argv: [/bin/true]}"}
        store = SqliteStore(tmp_path / "apsis.db")
        engine = new_engine(store, jobs, QuietAgents())
        run = engine.schedule("j", {})
        assert run.state == State.STARTING and run.proc_id is not None
        store.close()
        # The server restarts: the run is restored and its start resent, queued.
        store = SqliteStore(tmp_path / "apsis.db")
        agents = QuietAgents()
        engine = new_engine(store, jobs, agents)
        restore(engine, CatchUp())
        assert [s.proc_id for s in agents.starts] == [run.proc_id]
        # The agent's events come first: the program started and ended.
        started = engine.apply(engine.get(run.run_id), lifecycle.Started("running as pid 7"))
        engine.apply(started, lifecycle.Succeeded("exited 0"))
        engine.commit()
        assert agents.starts == [], "the queued start is withdrawn"
        store.close()

    run_async(scenario)
