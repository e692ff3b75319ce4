"""Housekeeping the server runs itself: `internal.archive|vacuum|stats` programs
and the configured retention policy.

Each piece of work proceeds in small steps with the event loop free in between,
so scheduling never waits on it. Internal runs end like any other run: success
with a message and a short report as their output, or failure with the error.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from apsis_common.states import State
from apsis_server.core import lifecycle
from apsis_server.core.bound import BoundInternal, InternalKind
from apsis_server.core.runs import Run
from apsis_server.engine.engine import Engine
from apsis_server.store.archive import Retention
from apsis_server.store.base import STDOUT, RunStore

log = logging.getLogger(__name__)


class Housekeeping:
    """Runs internal programs one at a time, and retention on a period."""

    def __init__(
        self,
        engine: Engine,
        store: RunStore,
        queue: asyncio.Queue[Run],
        archive_path: Path,
        retention: Retention | None = None,
        period: float = 600.0,
        chunk_size: int = 500,
        state_dir: Path | None = None,
    ) -> None:
        self._engine = engine
        self._store = store
        self._archive_path = archive_path
        self._retention = retention
        self._period = period
        self._chunk_size = chunk_size
        # Relative paths in internal programs are relative to the state directory.
        self._base = state_dir or archive_path.parent
        self._queue = queue
        self.longest_step = 0.0

    async def run(self) -> None:
        """Work through internal runs as they come, and retention on its period."""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._internal_runs())
            if self._retention is not None:
                tasks.create_task(self._retention_loop(self._retention))

    async def _internal_runs(self) -> None:
        while True:
            run = await self._queue.get()
            program = run.program
            if not isinstance(program, BoundInternal):
                continue  # the engine hands over internal programs only
            try:
                message, report = await self._do(program.kind, program.options)
            except (OSError, sqlite3.Error, ValueError) as exc:
                self._finish(run, State.FAILURE, f"{program.kind} failed: {exc}", None)
            else:
                self._finish(run, State.SUCCESS, message, report)

    async def _retention_loop(self, retention: Retention) -> None:
        while True:
            try:
                moved = await self.archive(retention, self._archive_path)
                if moved:
                    log.info("retention: archived %d runs to %s", moved, self._archive_path)
            except (OSError, sqlite3.Error) as exc:
                log.error("retention failed: %s", exc)
            await asyncio.sleep(self._period)

    async def _do(
        self, kind: InternalKind, program: Mapping[str, Any]
    ) -> tuple[str, dict[str, Any]]:
        if kind == InternalKind.ARCHIVE:
            path = self._base / program["path"] if program.get("path") else self._archive_path
            retention = Retention(age=float(program["age"]))
            moved = await self.archive(
                retention,
                path,
                chunk_size=int(program.get("chunk_size", self._chunk_size)),
                chunk_sleep=float(program.get("chunk_sleep", 0.0)),
                most=program.get("count"),
            )
            return f"archived {moved} runs to {path}", {"archived": moved, "path": str(path)}
        if kind == InternalKind.VACUUM:
            before = self._store.size()
            await self.vacuum()
            after = self._store.size()
            return f"vacuumed: {before} → {after} bytes", {"before": before, "after": after}
        stats = self.stats()
        if program.get("path"):
            text = json.dumps(stats, indent=2)
            target = self._base / program["path"]
            await asyncio.to_thread(target.write_text, text)
        return "stats collected", stats

    async def archive(
        self,
        retention: Retention,
        path: Path,
        *,
        chunk_size: int | None = None,
        chunk_sleep: float = 0.0,
        most: int | None = None,
    ) -> int:
        """Move the runs the policy selects to the archive at `path`; how many moved."""
        chunk = chunk_size or self._chunk_size
        archiver = self._store.archiver(path)
        moved = 0

        async def step(numbers: list[int]) -> int:
            start = time.perf_counter()
            count = archiver.move(numbers)
            self.longest_step = max(self.longest_step, time.perf_counter() - start)
            await asyncio.sleep(chunk_sleep)
            return count

        def room() -> int:
            return chunk if most is None else min(chunk, most - moved)

        try:
            if retention.age is not None:
                before = self._engine.clock() - retention.age
                while room() > 0 and (numbers := archiver.candidates_by_age(before, room())):
                    moved += await step(numbers)
            if retention.keep_per_job is not None:
                for job_id, at_most in archiver.thresholds(retention.keep_per_job):
                    while room() > 0 and (
                        numbers := archiver.candidates_by_count(job_id, at_most, room())
                    ):
                        moved += await step(numbers)
                    await asyncio.sleep(0)
        finally:
            archiver.close()
        return moved

    async def vacuum(self, pages: int = 256) -> None:
        """Give free pages back to the file system, a few at a time."""
        left = self._store.vacuum_step(pages)
        while left > 0:
            await asyncio.sleep(0)  # let the engine in between steps
            left = self._store.vacuum_step(pages)

    def stats(self) -> dict[str, Any]:
        return {
            "runs": self._store.counts(),
            "unfinished_in_memory": len(self._engine.runs),
            "store_bytes": self._store.size(),
        }

    def _finish(self, run: Run, state: State, message: str, report: dict[str, Any] | None) -> None:
        engine = self._engine
        current = engine.runs.get(run.run_id)
        if current is None or current.state not in (State.RUNNING, State.STOPPING):
            return
        if report is not None:
            data = (json.dumps(report, indent=2) + "\n").encode()
            engine.add_output(run.run_id, STDOUT, 0, data)
            engine.meta(run.run_id, output_length=len(data))
        ended = lifecycle.Succeeded if state == State.SUCCESS else lifecycle.Failed
        engine.apply(current, ended(message))
        engine.commit()
