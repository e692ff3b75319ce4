"""An in-memory run store: the reference behaviour for the contract tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from apsis_common.states import FINISHED
from apsis_server.core.runs import Identity, LogEntry, Run, args_key, run_number
from apsis_server.store.base import Changes, Chunk, OutputName, RunFilter, stitch
from apsis_server.store.query import matches, run_time


class MemoryStore:
    """Keeps everything in dicts; for tests and as a model of the SQLite store."""

    def __init__(self) -> None:
        self._runs: dict[str, Run] = {}
        self._log: dict[str, list[LogEntry]] = {}
        self._meta: dict[str, dict[str, Any]] = {}
        # Per run: chunks by (stream, offset).
        self._output: dict[str, dict[tuple[int, int], Chunk]] = {}
        self._acks: dict[str, int] = {}
        self._instances: dict[str, str] = {}
        self._cursors: dict[tuple[str, str], float] = {}
        # Archive "files" by path: stores of their own.
        self.archives: dict[Path, MemoryStore] = {}

    def max_run_number(self) -> int:
        return max((run_number(r) for r in self._runs), default=0)

    def write(self, changes: Changes) -> None:
        self._runs.update(changes.runs)
        for entry in changes.log:
            self._log.setdefault(entry.run_id, []).append(entry)
        for run_id, meta in changes.meta.items():
            self._meta.setdefault(run_id, {}).update(meta)
        for chunk in changes.output:
            self._output.setdefault(chunk.run_id, {}).setdefault(
                (chunk.stream, chunk.offset), chunk
            )
        for run_id in changes.deleted:
            self._runs.pop(run_id, None)
            self._log.pop(run_id, None)
        self._acks.update(changes.acks)
        self._instances.update(changes.instances)
        self._cursors.update(changes.cursors)

    def unfinished(self) -> list[Run]:
        return [r for r in self._runs.values() if r.state not in FINISHED]

    def get(self, run_id: str) -> Run | None:
        return self._runs.get(run_id)

    def query(self, run_filter: RunFilter) -> list[Run]:
        runs = sorted(self._runs.values(), key=lambda r: run_number(r.run_id), reverse=True)
        return [r for r in runs if matches(r, run_filter)][: run_filter.limit]

    def log(self, run_id: str) -> list[LogEntry]:
        return list(self._log.get(run_id, []))

    def meta(self, run_id: str) -> dict[str, Any]:
        return dict(self._meta.get(run_id, {}))

    def _pieces(self, run_id: str, name: OutputName) -> list[tuple[int, bytes]]:
        chunks = self._output.get(run_id, {}).values()
        placed = ((c.position(name), c.data) for c in chunks)
        return sorted((p, d) for p, d in placed if p is not None)

    def output_length(self, run_id: str, name: OutputName = OutputName.MERGED) -> int:
        return max((p + len(d) for p, d in self._pieces(run_id, name)), default=0)

    def output(
        self,
        run_id: str,
        start: int = 0,
        stop: int | None = None,
        name: OutputName = OutputName.MERGED,
    ) -> bytes:
        end = self.output_length(run_id, name) if stop is None else stop
        return stitch(self._pieces(run_id, name), start, end)

    def ack(self, agent_id: str) -> int:
        return self._acks.get(agent_id, 0)

    def instance(self, agent_id: str) -> str:
        return self._instances.get(agent_id, "")

    def cursors(self) -> dict[tuple[str, str], float]:
        return dict(self._cursors)

    def scheduled_identities(self, job_id: str, since: float) -> dict[str, Identity]:
        return {
            r.run_id: (r.schedule_time, args_key(r.args))
            for r in self._runs.values()
            if r.job_id == job_id
            and r.schedule_key is not None
            and r.schedule_time is not None
            and r.schedule_time >= since
        }

    def archiver(self, path: Path) -> MemoryArchive:
        return MemoryArchive(self, self.archives.setdefault(path, MemoryStore()))

    def vacuum_step(self, pages: int) -> int:
        return 0

    def counts(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for run in self._runs.values():
            found[run.state.value] = found.get(run.state.value, 0) + 1
        return found

    def size(self) -> int:
        return sum(len(c.data) for chunks in self._output.values() for c in chunks.values())

    def take(self, run_id: str, into: MemoryStore) -> None:
        """Move a run with its log, metadata and output to another store."""
        into._runs[run_id] = self._runs.pop(run_id)
        into._log[run_id] = self._log.pop(run_id, [])
        into._meta[run_id] = self._meta.pop(run_id, {})
        into._output[run_id] = self._output.pop(run_id, {})

    def finished(self) -> list[Run]:
        """Finished runs, oldest first."""
        runs = (r for r in self._runs.values() if r.state in FINISHED)
        return sorted(runs, key=lambda r: run_number(r.run_id))

    def close(self) -> None:
        pass


class MemoryArchive:
    """The `Archive` of a memory store: runs move to another memory store."""

    def __init__(self, store: MemoryStore, archive: MemoryStore) -> None:
        self._store = store
        self._archive = archive

    def thresholds(self, keep_per_job: int) -> list[tuple[str, int]]:
        numbers: dict[str, list[int]] = {}
        for run in self._store.query(RunFilter(limit=2**62)):
            numbers.setdefault(run.job_id, []).append(run_number(run.run_id))
        return [
            (job_id, found[keep_per_job])
            for job_id, found in sorted(numbers.items())
            if len(found) > keep_per_job
        ]

    def candidates_by_age(self, before: float, limit: int) -> list[int]:
        runs = [r for r in self._store.finished() if run_time(r) < before]
        return [run_number(r.run_id) for r in runs[:limit]]

    def candidates_by_count(self, job_id: str, at_most: int, limit: int) -> list[int]:
        runs = (r for r in self._store.finished() if r.job_id == job_id)
        numbers = [n for r in runs if (n := run_number(r.run_id)) <= at_most]
        return numbers[:limit]

    def move(self, numbers: list[int]) -> int:
        for number in numbers:
            self._store.take(f"r{number}", self._archive)
        return len(numbers)

    def close(self) -> None:
        pass
