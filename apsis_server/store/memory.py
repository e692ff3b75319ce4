"""An in-memory run store: the reference behaviour for the contract tests."""

from __future__ import annotations

from typing import Any

from apsis_common.states import FINISHED
from apsis_server.core.runs import Identity, LogEntry, Run, args_key, run_number
from apsis_server.store.base import Changes, RunFilter
from apsis_server.store.query import matches


class MemoryStore:
    """Keeps everything in dicts; for tests and as a model of the SQLite store."""

    def __init__(self) -> None:
        self._runs: dict[str, Run] = {}
        self._log: dict[str, list[LogEntry]] = {}
        self._meta: dict[str, dict[str, Any]] = {}
        self._output: dict[str, dict[int, bytes]] = {}
        self._acks: dict[str, int] = {}
        self._cursors: dict[tuple[str, str], float] = {}

    def max_run_number(self) -> int:
        return max((run_number(r) for r in self._runs), default=0)

    def write(self, changes: Changes) -> None:
        self._runs.update(changes.runs)
        for entry in changes.log:
            self._log.setdefault(entry.run_id, []).append(entry)
        for run_id, meta in changes.meta.items():
            self._meta.setdefault(run_id, {}).update(meta)
        for run_id, offset, data in changes.output:
            self._output.setdefault(run_id, {}).setdefault(offset, data)
        for run_id in changes.deleted:
            self._runs.pop(run_id, None)
            self._log.pop(run_id, None)
        self._acks.update(changes.acks)
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

    def output_length(self, run_id: str) -> int:
        chunks = self._output.get(run_id, {})
        return max((offset + len(data) for offset, data in chunks.items()), default=0)

    def output(self, run_id: str, start: int = 0, stop: int | None = None) -> bytes:
        end = self.output_length(run_id) if stop is None else stop
        chunks = sorted(self._output.get(run_id, {}).items())
        return b"".join(
            data[max(start, offset) - offset : end - offset]
            for offset, data in chunks
            if offset < end and offset + len(data) > start
        )

    def ack(self, agent_id: str) -> int:
        return self._acks.get(agent_id, 0)

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

    def close(self) -> None:
        pass
