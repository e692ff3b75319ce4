"""Many runs due at once: the first starts reach the agent while the rest are fired."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from apsis_common import protocol as p
from apsis_common.states import State
from apsis_server.core import lifecycle
from apsis_server.engine.engine import Engine
from apsis_server.engine.timers import FIRE_CHUNK
from apsis_server.store.sqlite import SqliteStore
from tests.engine_kit import QuietAgents, new_engine
from tests.harness import run_async


class RecordingAgents(QuietAgents):
    """Notes, at every start handed out, how many due runs were not fired yet."""

    def __init__(self) -> None:
        super().__init__()
        self.engine: Engine | None = None
        self.unfired: list[int] = []
        self.expected = 0
        self.all_started = asyncio.Event()

    def start(self, agent_id: str, proc: p.StartProc) -> None:
        assert self.engine is not None
        runs = self.engine.runs.values()
        self.unfired.append(sum(r.state == State.SCHEDULED for r in runs))
        if len(self.unfired) == self.expected:
            self.all_started.set()


def test_a_burst_of_due_runs_is_started_in_slices(tmp_path: Path) -> None:
    count = 2 * FIRE_CHUNK + 50

    async def scenario() -> None:
        store = SqliteStore(tmp_path / "apsis.db")
        agents = RecordingAgents()
        engine = new_engine(store, {"j": "program: {type: program, argv: [/bin/true]}"}, agents)
        agents.engine, agents.expected = engine, count
        due = time.time() + 0.2
        for _ in range(count):
            engine.schedule("j", {}, when=due)
        loop = asyncio.create_task(engine.run())
        await asyncio.wait_for(agents.all_started.wait(), 30)
        loop.cancel()
        # The first slice went out while most of the burst was still to fire, and
        # every start was committed (in the store) before it was handed out.
        assert agents.unfired[0] >= count - FIRE_CHUNK
        assert agents.unfired[-1] == 0
        assert sum(1 for r in store.unfinished() if r.state == State.STARTING) == count
        store.close()

    run_async(scenario)


def test_a_run_finished_but_not_yet_written_reads_as_finished(tmp_path: Path) -> None:
    """Between a run's last transition and the commit, the store still holds its
    previous state: readers (the run page's feed) must get the new one."""

    async def scenario() -> None:
        store = SqliteStore(tmp_path / "apsis.db")
        engine = new_engine(store, {"j": "program: {type: no-op}"}, QuietAgents())
        run = engine.schedule("j", {}, when=time.time() + 60)
        assert store.get(run.run_id) is not None  # written, scheduled
        engine.apply(engine.get(run.run_id), lifecycle.Skipped("skipped by hand"))
        assert store.get(run.run_id).state == State.SCHEDULED  # type: ignore[union-attr]
        assert engine.get(run.run_id).state == State.SKIPPED
        engine.commit()
        assert engine.get(run.run_id).state == State.SKIPPED
        store.close()

    run_async(scenario)
