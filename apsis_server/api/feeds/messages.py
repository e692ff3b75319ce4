"""The websocket feeds' messages (docs/api.md, "Websocket feeds"), each tagged by its
`type`, holding runs, jobs, log entries and agents as the REST API shows them."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any, Literal

from apsis_server.api.views import Agent, Job, LogEntry, Run, Time

# -- /api/v1/summary ------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Snapshot:
    """The first message: every job, the unfinished and latest finished runs, agents."""

    type: Literal["snapshot"] = "snapshot"
    version: str
    time: Time
    jobs: list[Job]
    runs: list[Run]
    agents: list[Agent]


@dataclass(frozen=True, kw_only=True)
class Runs:
    """Runs created or changed, each in its latest state."""

    type: Literal["runs"] = "runs"
    runs: list[Run]


@dataclass(frozen=True, kw_only=True)
class JobChanged:
    type: Literal["job"] = "job"
    job: Job


@dataclass(frozen=True, kw_only=True)
class JobRemoved:
    type: Literal["job_removed"] = "job_removed"
    job_id: str


@dataclass(frozen=True, kw_only=True)
class AgentChanged:
    type: Literal["agent"] = "agent"
    agent: Agent


# -- /api/v1/runs/{run_id}/updates -------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class RunChanged:
    type: Literal["run"] = "run"
    run: Run


@dataclass(frozen=True, kw_only=True)
class Log:
    """Run log entries to append."""

    type: Literal["log"] = "log"
    entries: list[LogEntry]


@dataclass(frozen=True, kw_only=True)
class Meta:
    """Metadata keys that changed: merge them into what you have."""

    type: Literal["meta"] = "meta"
    meta: dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class Output:
    """Output bytes from `offset` on, base64-encoded."""

    type: Literal["output"] = "output"
    offset: int
    data: str


def output_message(offset: int, data: bytes) -> Output:
    """An `output` message: `data` from `offset` on."""
    return Output(offset=offset, data=base64.b64encode(data).decode("ascii"))
