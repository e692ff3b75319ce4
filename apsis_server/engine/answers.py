"""Answers to API calls that wait on a run: until it finishes (`?wait=`), or until
its agent holds its start (`POST /runs`).

The engine calls `release` after each commit with the runs it changed; the
dispatcher's "accepted" answers come through `handed_over`. A wait that times out
answers with the run as it is then.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Protocol

from apsis_common.states import FINISHED, State
from apsis_server.core.runs import Run

Futures = dict[str, list[asyncio.Future[Run]]]


class Runs(Protocol):
    """What answering reads: runs by id, and the run that owns a proc id."""

    def get(self, run_id: str) -> Run: ...

    def run_for(self, proc_id: str) -> Run | None: ...


class Answers:
    """The futures of the callers waiting on runs, by run id."""

    def __init__(self, runs: Runs) -> None:
        self._runs = runs
        self._finished: Futures = {}
        self._started: Futures = {}

    async def finished(self, run_id: str, timeout: float) -> Run:
        """The run once finished, or as it is when `timeout` runs out."""
        run = self._runs.get(run_id)
        if run.state in FINISHED or timeout <= 0:
            return run
        return await self._await(self._finished, run_id, timeout)

    async def started(self, run_id: str, timeout: float) -> Run:
        """The run once in its agent's hands (the agent accepted its start), or past
        `starting`, or as it is when `timeout` runs out."""
        run = self._runs.get(run_id)
        if run.state != State.STARTING or timeout <= 0:
            return run
        return await self._await(self._started, run_id, timeout)

    def handed_over(self, proc_ids: list[str]) -> None:
        """The agent has accepted these starts: it holds their specs now."""
        for proc_id in proc_ids:
            run = self._runs.run_for(proc_id)
            if run is not None:
                _answer(self._started.pop(run.run_id, []), run)

    def release(self, finished: list[Run], changed: Mapping[str, Run]) -> None:
        """After a commit: answer whoever waits for these runs to finish, or to
        leave `starting`."""
        for run in finished:
            _answer(self._finished.pop(run.run_id, []), run)
        for run_id in [r for r in self._started if r in changed]:
            run = changed[run_id]
            if run.state != State.STARTING:
                _answer(self._started.pop(run_id), run)

    async def _await(self, waiting: Futures, run_id: str, timeout: float) -> Run:
        future: asyncio.Future[Run] = asyncio.get_running_loop().create_future()
        waiting.setdefault(run_id, []).append(future)
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            futures = waiting.get(run_id, [])
            if future in futures:
                futures.remove(future)
                if not futures:
                    del waiting[run_id]
            return self._runs.get(run_id)


def _answer(futures: list[asyncio.Future[Run]], run: Run) -> None:
    for future in futures:
        if not future.done():
            future.set_result(run)
