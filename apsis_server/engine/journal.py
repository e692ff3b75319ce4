"""What the engine has changed and not yet written, and what waits on the write.

The engine gathers a step's changes here — runs, log lines, metadata, output, agent
acks, schedule cursors, withdrawn runs — together with what must wait until they
are durable: requests to agents (a proc id is recorded before any agent hears of
it) and runs that just finished (whose actions fire once they are written).
`write` puts the changes in the store in one transaction; if the store refuses
(disk full, read-only), everything is kept for the next try and nothing that waits
on durability is released.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from apsis_common import protocol as p
from apsis_common.errors import Unavailable
from apsis_common.states import State
from apsis_server.agents.dispatch import Command
from apsis_server.core.planner import Key
from apsis_server.core.runs import LogEntry, Run
from apsis_server.store.base import Changes, Chunk, RunStore

log = logging.getLogger(__name__)

Request = tuple[str, p.StartProc | Command]  # (agent id, what to ask of it)


@dataclass
class Written:
    """One write: the changes now durable, and what waited on them."""

    changes: Changes
    requests: list[Request] = field(default_factory=list)
    finished: list[Run] = field(default_factory=list)


class Journal:
    """The changes not yet written, and what waits on them."""

    def __init__(
        self, store: RunStore, clock: Callable[[], float], server: str | None = None
    ) -> None:
        """`server`: the name each log entry carries (servers sharing a database)."""
        self._store = store
        self._clock = clock
        self._server = server
        self._pending = Written(Changes())
        # Why the last write failed, until one succeeds.
        self.store_error: str | None = None

    @property
    def changes(self) -> Changes:
        """The changes not yet written."""
        return self._pending.changes

    def __bool__(self) -> bool:
        return bool(self._pending.changes or self._pending.requests)

    def run(self, run: Run) -> None:
        self._pending.changes.runs[run.run_id] = run

    def withdraw(self, run_id: str) -> None:
        """A scheduled run taken back: deleted from the store as if never planned."""
        self._pending.changes.runs.pop(run_id, None)
        self._pending.changes.deleted.add(run_id)

    def note(self, run_id: str, message: str, state: State | None = None) -> None:
        entry = LogEntry(run_id, self._clock(), message, state, self._server)
        self._pending.changes.log.append(entry)

    def meta(self, run_id: str, meta: Mapping[str, Any]) -> None:
        self._pending.changes.meta.setdefault(run_id, {}).update(meta)

    def output(self, chunk: Chunk) -> None:
        self._pending.changes.output.append(chunk)

    def ack(self, agent_id: str, seq: int) -> None:
        self._pending.changes.acks[agent_id] = seq

    def instance(self, agent_id: str, instance: str) -> None:
        self._pending.changes.instances[agent_id] = instance

    def cursors(self, cursors: Mapping[Key, float]) -> None:
        self._pending.changes.cursors.update(cursors)

    def request(self, agent_id: str, item: p.StartProc | Command) -> None:
        """Ask an agent once the changes so far are written."""
        self._pending.requests.append((agent_id, item))

    def finished(self, run: Run) -> None:
        """A run that just finished: its actions fire once it is written."""
        self._pending.finished.append(run)

    @property
    def finishing(self) -> list[Run]:
        """Runs that finished since the last write."""
        return self._pending.finished

    def write(self) -> Written:
        """Write the changes in one transaction; what was written and what waited on
        it. Unavailable if the store refuses: everything is kept for the next try."""
        written, self._pending = self._pending, Written(Changes())
        if written.changes:
            try:
                self._store.write(written.changes)
            except Unavailable as exc:
                # Memory stays ahead of the store, never apart from it.
                later = self._pending
                self._pending = Written(
                    written.changes.merged(later.changes),
                    written.requests + later.requests,
                    written.finished + later.finished,
                )
                if self.store_error is None:
                    log.error("store write failed; retrying: %s", exc)
                self.store_error = str(exc)
                raise Unavailable(f"{exc}; kept, and written once the store is writable") from exc
            if self.store_error is not None:
                log.info("store writable again")
                self.store_error = None
        return written
