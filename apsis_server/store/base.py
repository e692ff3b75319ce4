"""The run store port: what the engine needs from storage, whatever the backend.

Writes arrive as one `Changes` batch applied in one transaction, so a batch of
transitions, log lines, output and an agent's new ack is durable together or
not at all. Reads serve the API; history never has to fit in memory.
Housekeeping moves finished runs to an archive through an `Archive`, in chunks it
paces itself, and gives free space back with `vacuum_step`.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from apsis_common.states import State
from apsis_server.core.runs import Identity, LogEntry, Run


class OutputName(enum.StrEnum):
    """A run's outputs. A job with `stderr: merge` (and every run from before
    stdout and stderr were kept apart) has stdout alone, holding both."""

    MERGED = "merged"  # both streams, in the order the agent read them
    STDOUT = "stdout"
    STDERR = "stderr"


def output_name(text: str | None) -> OutputName:
    """The output a request names (`merged` when none); ValueError, saying what is
    allowed, for anything else."""
    if text is None:
        return OutputName.MERGED
    if text not in tuple(OutputName):
        names = ", ".join(OutputName)
        raise ValueError(f"name must be one of {names}, got {text[:40]!r}")
    return OutputName(text)


STDOUT, STDERR = 1, 2  # the streams, by the program's file descriptor


@dataclass(frozen=True)
class Chunk:
    """Output bytes of one run: `data` at `offset` of its `stream`, and at `merged`
    in the merged view (None: at `offset`, as for a run with stdout alone)."""

    run_id: str
    offset: int
    data: bytes
    stream: int = STDOUT
    merged: int | None = None

    def position(self, name: OutputName) -> int | None:
        """Where the chunk starts in output `name` (None: it is not part of it)."""
        if name is OutputName.MERGED:
            return self.offset if self.merged is None else self.merged
        wanted = STDOUT if name is OutputName.STDOUT else STDERR
        return self.offset if self.stream == wanted else None


def stitch(pieces: Iterable[tuple[int, bytes]], start: int, stop: int) -> bytes:
    """The bytes in [start, stop) of output pieces (position, data) in position
    order; a gap (a middle left out over the cap) is skipped."""
    out = bytearray()
    for position, data in pieces:
        if position < stop and position + len(data) > start:
            out += data[max(start, position) - position : stop - position]
    return bytes(out)


@dataclass
class Changes:
    """Everything one engine step writes."""

    runs: dict[str, Run] = field(default_factory=dict)
    log: list[LogEntry] = field(default_factory=list)
    meta: dict[str, dict[str, Any]] = field(default_factory=dict)
    output: list[Chunk] = field(default_factory=list)
    acks: dict[str, int] = field(default_factory=dict)
    # The event sequence each agent reports in (see agents/facts.py).
    instances: dict[str, str] = field(default_factory=dict)
    cursors: dict[tuple[str, str], float] = field(default_factory=dict)
    # Scheduled runs withdrawn before they ever ran (their job changed).
    deleted: set[str] = field(default_factory=set)

    def merged(self, later: Changes) -> Changes:
        """These changes followed by `later` ones, as one batch."""
        meta = {k: dict(v) for k, v in self.meta.items()}
        for run_id, values in later.meta.items():
            meta.setdefault(run_id, {}).update(values)
        return Changes(
            runs={**self.runs, **later.runs},
            log=self.log + later.log,
            meta=meta,
            output=self.output + later.output,
            acks={**self.acks, **later.acks},
            instances={**self.instances, **later.instances},
            cursors={**self.cursors, **later.cursors},
            deleted=self.deleted | later.deleted,
        )

    def __bool__(self) -> bool:
        return bool(
            self.runs
            or self.log
            or self.meta
            or self.output
            or self.acks
            or self.instances
            or self.cursors
            or self.deleted
        )


@dataclass(frozen=True)
class RunFilter:
    """A history query: every given field must match; newest first."""

    job_id: str | None = None
    # Part of a job id, ignoring ASCII case; and the start of one ("demo/").
    job_text: str | None = None
    job_prefix: str | None = None
    states: tuple[State, ...] = ()
    label: str | None = None
    args: Mapping[str, str] = field(default_factory=dict)
    since: float | None = None
    until: float | None = None
    before: str | None = None  # keyset cursor: runs with a smaller run number
    limit: int = 100


class Archive(Protocol):
    """Finished runs on their way from the store to an archive file, moved in
    chunks: each move is durable in the archive before the runs leave the store."""

    def thresholds(self, keep_per_job: int) -> list[tuple[str, int]]:
        """Per job, the run number at and below which its runs exceed `keep_per_job`."""

    def candidates_by_age(self, before: float, limit: int) -> list[int]:
        """Run numbers of finished runs whose time is before `before`, oldest first."""

    def candidates_by_count(self, job_id: str, at_most: int, limit: int) -> list[int]:
        """Run numbers of the job's finished runs numbered `at_most` or less."""

    def move(self, numbers: list[int]) -> int:
        """Move these runs with their log, metadata and output; how many moved."""

    def close(self) -> None: ...


class RunStore(Protocol):
    """Storage for runs, their logs, metadata and output, and agent bookkeeping."""

    def max_run_number(self) -> int:
        """The largest run number ever allocated (0 if none)."""

    def write(self, changes: Changes) -> None:
        """Apply every change in one transaction, or none and raise `Unavailable`
        (disk full, file read-only): the caller keeps the changes and tries again."""

    def unfinished(self) -> list[Run]:
        """Every run not in a finished state."""

    def get(self, run_id: str) -> Run | None: ...

    def query(self, run_filter: RunFilter) -> list[Run]:
        """Runs matching the filter, newest (largest run number) first."""

    def log(self, run_id: str) -> list[LogEntry]: ...

    def meta(self, run_id: str) -> dict[str, Any]: ...

    def output_length(self, run_id: str, name: OutputName = OutputName.MERGED) -> int: ...

    def output(
        self,
        run_id: str,
        start: int = 0,
        stop: int | None = None,
        name: OutputName = OutputName.MERGED,
    ) -> bytes:
        """The stored bytes of output `name` in [start, stop); bytes left out over
        the cap are skipped."""

    def ack(self, agent_id: str) -> int:
        """The highest event sequence number applied for the agent (0 if none)."""

    def instance(self, agent_id: str) -> str:
        """The event sequence the agent last reported in ("" if none is known)."""

    def cursors(self) -> dict[tuple[str, str], float]:
        """Per (job id, schedule key): the last schedule time planned."""

    def scheduled_identities(self, job_id: str, since: float) -> dict[str, Identity]:
        """Run id → identity (schedule time, args) of the job's runs planned from its
        schedules for `since` or later, in any state."""

    def archiver(self, path: Path) -> Archive:
        """Moves finished runs from this store to the archive at `path`."""

    def vacuum_step(self, pages: int) -> int:
        """Give back up to `pages` free pages of space; how many are left."""

    def counts(self) -> dict[str, int]:
        """Runs by state."""

    def size(self) -> int:
        """Bytes the store takes."""

    def close(self) -> None: ...
