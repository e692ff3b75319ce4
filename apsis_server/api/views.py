"""The API's answers as typed values: each gives its JSON (`encode`) and its JSON
Schema (`openapi.py` builds the document's components from `ANSWERS`).

REST answers, the websocket feeds and the webhook action all show runs, jobs, log
entries and agents through the `*_view` functions here, and turn them into bytes
with `encode`, so a field is named, typed and formatted in one place: times are
ISO 8601 text in UTC (`format_time`), states are their names. docs/api.md
describes the same shapes for readers.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from apsis_common.states import State
from apsis_common.times import format_time
from apsis_server.agents.conn import AgentConn, AgentState
from apsis_server.core import checks, jobs, runs
from apsis_server.core.actions import PluginAction
from apsis_server.core.bound import BoundInternal, BoundNoOp, BoundProgram
from apsis_server.core.conditions import PluginCondition
from apsis_server.core.crontab import CrontabSchedule
from apsis_server.core.jobs import ADHOC_JOB, JobError
from apsis_server.core.schedule_types import (
    DailyIntervalSchedule,
    DailySchedule,
    ExplicitSchedule,
    IntervalSchedule,
    PluginSchedule,
    StopSchedule,
)
from apsis_server.core.schedule_types import (
    Schedule as CoreSchedule,
)
from apsis_server.web.markdown import description_html

Time = Annotated[str, Meta(description="ISO 8601 in UTC, e.g. 2026-11-26T21:00:00.000000Z")]
RunId = Annotated[str, Meta(pattern="^r[0-9]+$")]
Count = Annotated[int, Meta(ge=0)]
Seconds = Annotated[float, Meta(ge=0)]
# A run is created `scheduled`; `new` is only where its first transition starts from.
RunState = Annotated[State, Meta(extra_json_schema={"not": {"const": State.NEW.value}})]


def time_text(t: float) -> str:
    """A time as the API shows it."""
    return format_time(t) or ""


# -- runs -------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """A run (docs/api.md, "Run")."""

    run_id: RunId
    job_id: str
    args: dict[str, str]
    state: RunState
    schedule_time: Time | None
    stop_time: Annotated[
        Time | None, Meta(description="when a stop schedule, or a stop by hand, stops it")
    ]
    times: Annotated[dict[str, Time], Meta(description="when it entered each state")]
    message: Annotated[str | None, Meta(description="why the last transition happened")]
    ad_hoc: Annotated[
        bool,
        Meta(description="not from a schedule nor an action: by hand, or an ad-hoc program"),
    ]
    origin: Annotated[
        Origin,
        Meta(
            description="what made it: a schedule; someone, for a job (hand) or for a"
            " program given directly (adhoc); a rerun or retry of another run; an action"
        ),
    ]
    rerun_of: str | None
    labels: list[str]
    elapsed: Annotated[
        float | None,
        Meta(description="seconds from running to finished (or to now), null if it never ran"),
    ]


Origin = Literal["schedule", "hand", "adhoc", "rerun", "action"]


def origin(run: runs.Run) -> Origin:
    """What made the run: `ad_hoc` alone says only "not from a schedule"."""
    if run.job_id == ADHOC_JOB and run.ad_hoc:
        return "adhoc"
    if run.rerun_of is not None:
        return "rerun"
    if run.schedule_key is not None:
        return "schedule"
    return "hand" if run.ad_hoc else "action"


def run_view(run: runs.Run, now: float, passed: runs.LogEntry | None = None) -> Run:
    """The run as the API shows it. With `passed`, a log entry of a state the run
    entered and left in one engine step: the run as it was then (that state, its
    message, the times up to it), for the feed that tells every transition."""
    state, message, times = run.state, run.message, run.times
    if passed is not None and passed.state is not None:
        state, message = passed.state, passed.message
        times = {k: v for k, v in run.times.items() if v <= passed.time}
    started = times.get("running")
    end = times.get(state.value) if state.finished else now
    # The answer shows the run's state; it gives no run a state (tests/unit/test_shape.py
    # looks for `Run(..., state=...)`, by name).
    return Run(
        run.run_id,
        run.job_id,
        dict(run.args),
        state,
        schedule_time=format_time(run.schedule_time),
        stop_time=format_time(run.stop_time),
        times={k: time_text(v) for k, v in times.items()},
        message=message,
        ad_hoc=run.ad_hoc,
        origin=origin(run),
        rerun_of=run.rerun_of,
        labels=list(run.labels),
        elapsed=(end - started) if started is not None and end is not None else None,
    )


@dataclass(frozen=True)
class LogEntry:
    """One line of a run's log: the state entered, if any, and why."""

    time: Time
    state: State | None
    message: str
    # The server that wrote it, with servers sharing a database; null with one.
    server: str | None = None


def log_view(entry: runs.LogEntry) -> LogEntry:
    return LogEntry(
        time=time_text(entry.time), state=entry.state, message=entry.message, server=entry.server
    )


# -- jobs -------------------------------------------------------------------------


# The job file's name for each built-in schedule type (docs/jobs.md, "Schedules"); a
# plugin's schedule type (docs/extending.md) has the name it was registered under.
SCHEDULE_TYPES: dict[type, str] = {
    IntervalSchedule: "interval",
    DailySchedule: "daily",
    DailyIntervalSchedule: "daily-interval",
    ExplicitSchedule: "explicit",
    CrontabSchedule: "crontab",
}


@dataclass(frozen=True)
class Schedule:
    """One of a job's schedules: its type as the job file names it, whether it is
    on, what it says, its time zone and, for a start/stop schedule, the stop."""

    type: Annotated[
        str,
        Meta(description="interval, daily, daily-interval, explicit, crontab, or a plugin's type"),
    ]
    enabled: bool
    text: Annotated[str, Meta(description='e.g. "Mon-Fri at 09:30:00 America/New_York"')]
    zone: Annotated[str | None, Meta(description="the zone its times are in; null: UTC")]
    stop: Annotated[str | None, Meta(description='e.g. "stop after 10m"; null: none')]


def schedule_view(schedule: CoreSchedule) -> Schedule:
    start, stop = (
        (schedule.start, schedule.stop.text())
        if isinstance(schedule, StopSchedule)
        else (schedule, None)
    )
    tz = getattr(start, "tz", None)
    return Schedule(
        type=start.type_name if isinstance(start, PluginSchedule) else SCHEDULE_TYPES[type(start)],
        enabled=schedule.enabled,
        text=schedule.text(),
        zone=None if tz is None else str(tz.name),
        stop=stop,
    )


@dataclass(frozen=True)
class Job:
    """A job as loaded (docs/api.md, "Job")."""

    job_id: str
    params: list[str]
    program: Annotated[
        dict[str, Any], Meta(extra_json_schema={"required": ["type"]}, description="as written")
    ]
    schedules: list[Schedule]
    conditions: list[Any]
    actions: list[Any]
    metadata: dict[str, Any]
    description_html: Annotated[
        str,
        Meta(
            description=(
                "metadata.description rendered from Markdown (CommonMark, raw HTML off)"
                " and sanitized: only p, br, hr, h3-h6, lists, blockquote, pre, code,"
                " strong, em, tables and links to http(s), mailto or relative URLs"
                ' (rel="noopener noreferrer"); "" for no description'
            )
        ),
    ]
    labels: list[str]
    next_times: list[Time]


def upcoming(job: jobs.Job, now: float, count: int = 5) -> list[float]:
    """The next `count` schedule times of a job."""
    return [due.time for due in jobs.next_times(job, now, count)]


def job_view(job: jobs.Job, next_times: list[float]) -> Job:
    return Job(
        job_id=job.job_id,
        params=list(job.params),
        program=job.program.to_plain(),
        schedules=[schedule_view(s) for s in job.schedules],
        conditions=[_plain(c) for c in job.conditions],
        actions=[_plain(a) for a in job.actions],
        metadata=_plain(dict(job.metadata)),
        # The only HTML the API hands out, and the only HTML the UI inserts as such.
        description_html=description_html(job.description),
        labels=list(job.labels),
        next_times=[time_text(t) for t in next_times],
    )


def _plain(value: Any) -> Any:
    """Values safe for JSON (dataclasses and odd scalars become text or dicts); a
    plugin's condition or action as written."""
    if isinstance(value, PluginCondition | PluginAction):
        return _plain({"type": value.type, **value.form})
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: _plain(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


# -- agents -----------------------------------------------------------------------


@dataclass(frozen=True)
class Agent:
    """An agent and its connection."""

    agent_id: str
    kind: Annotated[str, Meta(description="local, sudo, ssh or static")]
    host: str
    user: str | None
    state: AgentState
    version: str
    epoch: int
    pid: int
    port: int
    running: Annotated[Count, Meta(description="its runs starting, running or stopping")]
    agent_running: Annotated[int | None, Meta(description="processes, as the agent reports")]
    outbox_pending: Annotated[int | None, Meta(description="events the agent has yet to send")]
    pending_starts: Annotated[Count, Meta(description="starts held until it connects")]
    last_heartbeat: Time | None
    error: str | None


def agent_view(conn: AgentConn, running: int) -> Agent:
    """An agent as the API and the feeds show it."""
    return Agent(
        agent_id=conn.agent_id,
        kind=conn.target.kind,
        host=conn.host,
        user=conn.user,
        state=conn.state,
        version=conn.version,
        epoch=conn.epoch,
        pid=conn.pid,
        port=conn.port,
        running=running,
        agent_running=conn.running,
        outbox_pending=conn.outbox_pending,
        pending_starts=len(conn.pending),
        last_heartbeat=format_time(conn.last_heartbeat),
        error=conn.error,
    )


# -- what the server says about itself ----------------------------------------


@dataclass(frozen=True)
class LoopLatency:
    """Event-loop lag over the last minute, seconds (null just after start)."""

    last: float | None
    max: float | None
    mean: float | None


@dataclass(frozen=True)
class ScheduleLateness:
    """From runs' schedule times to them running, seconds."""

    count: Count
    mean: float | None


@dataclass(frozen=True)
class Stats:
    """Counts, loop latency, uptime, store size (docs/api.md, "Stats")."""

    version: str
    start_time: Time
    uptime: Seconds
    jobs: Count
    runs: Annotated[dict[str, Count], Meta(description="unfinished runs by state")]
    runs_total: Annotated[Count, Meta(description="the highest run number")]
    transitions: Count
    agents: Annotated[dict[AgentState, Count], Meta(description="agents by connection state")]
    loop_latency: LoopLatency
    schedule_lateness: ScheduleLateness
    store_bytes: Count
    store_error: Annotated[
        str | None, Meta(description="why changes wait in memory, unwritten; null when written")
    ]


# -- what a run waits for -------------------------------------------------------


@dataclass(frozen=True)
class DependencyRun:
    run_id: RunId
    state: RunState


@dataclass(frozen=True)
class Dependency:
    """A dependency condition of the run: the runs it looks for, and whether one is
    in a state it accepts."""

    job_id: str
    args: dict[str, str]
    states: list[State]
    satisfied: bool
    runs: list[DependencyRun]


@dataclass(frozen=True)
class Dependencies:
    """What the run waits for, and which waiting runs wait for it."""

    waits_for: list[Dependency]
    waited_by: list[RunId]


# -- the answers ------------------------------------------------------------------


@dataclass(frozen=True)
class Error:
    """An error answer; a job that failed to load comes with its errors."""

    error: str
    errors: list[JobError] | UnsetType = UNSET


@dataclass(frozen=True)
class Alive:
    alive: Literal[True] = True


@dataclass(frozen=True)
class Version:
    version: str


@dataclass(frozen=True)
class JobList:
    """Jobs, and the job files that failed to load."""

    jobs: list[Job]
    errors: list[JobError]


@dataclass(frozen=True)
class JobAnswer:
    """One job; `errors` when its file no longer loads and the last good definition
    is in use."""

    job: Job
    errors: list[JobError] | UnsetType = UNSET


@dataclass(frozen=True)
class Reload:
    """What a reload of the jobs directory changed; `kept`: jobs whose files no
    longer load, left as they were."""

    added: list[str]
    changed: list[str]
    removed: list[str]
    kept: list[str]
    errors: list[JobError]


@dataclass(frozen=True)
class RunProgram:
    """What a run runs, bound (every template expanded): a shell command, an argv,
    a no-op or one of the server's internal programs."""

    type: Literal["shell", "program", "no-op", "internal"]
    command: Annotated[str | None, Meta(description="a shell program's command line")]
    argv: Annotated[list[str] | None, Meta(description="a program's argv")]
    host: str | None
    user: str | None
    timeout: Annotated[Seconds | None, Meta(description="stopped after this long")]
    internal: Annotated[str | None, Meta(description="internal.archive, internal.vacuum…")]
    stderr: Annotated[
        Literal["separate", "merge"] | None,
        Meta(description="stderr kept apart from stdout, or merged into it (a process's)"),
    ] = None


# How a shell program's command is run (core/bound.py).
_SHELL = ("/bin/bash", "-c")


def program_view(program: BoundProgram) -> RunProgram:
    if isinstance(program, BoundNoOp):
        return RunProgram("no-op", None, None, None, None, program.duration or None, None)
    if isinstance(program, BoundInternal):
        return RunProgram("internal", None, None, None, None, None, program.kind.value)
    timeout = None if program.timeout is None else program.timeout.duration
    shell = len(program.argv) == 3 and program.argv[:2] == _SHELL
    return RunProgram(
        type="shell" if shell else "program",
        command=program.argv[2] if shell else None,
        argv=None if shell else list(program.argv),
        host=program.host,
        user=program.user,
        timeout=timeout,
        internal=None,
        stderr=program.stderr.value,
    )


@dataclass(frozen=True)
class RunAnswer:
    """A run; `program` once it is bound (it has left `scheduled`, or is ad hoc)."""

    run: Run
    program: RunProgram | UnsetType | None = UNSET


@dataclass(frozen=True)
class RunPage:
    """Runs, newest first."""

    runs: list[Run]
    next: Annotated[RunId | None, Meta(description="pass as `before` for the next page")]


@dataclass(frozen=True)
class RunLog:
    log: list[LogEntry]


@dataclass(frozen=True)
class RunMeta:
    meta: Annotated[dict[str, Any], Meta(description="host, pid, exit_code, signal, rusage…")]


@dataclass(frozen=True)
class AgentList:
    agents: list[Agent]


@dataclass(frozen=True)
class CheckFinding:
    """Something the sanity checker finds wrong (core/checks.py)."""

    check: checks.Check
    severity: checks.Severity
    message: str
    link: Annotated[str, Meta(description="the web UI's page for it")]
    job_id: str | None
    run_id: str | None
    agent_id: str | None


@dataclass(frozen=True)
class Checks:
    """`GET /api/v1/checks`: the findings of a check made now (on the leader)."""

    time: Annotated[Time | None, Meta(description="when checked; null on a standby")]
    findings: list[CheckFinding]


def checks_view(time: float | None, findings: list[checks.Finding]) -> Checks:
    return Checks(
        format_time(time),
        [
            CheckFinding(f.check, f.severity, f.message, f.link, f.job_id, f.run_id, f.agent_id)
            for f in findings
        ],
    )


# Every answer of the REST API: the OpenAPI document's schemas are theirs.
@dataclass(frozen=True)
class ServerInfo:
    """A server sharing the store, as it last reported itself."""

    server_id: str
    url: str
    role: Literal["leader", "standby"]
    epoch: int | None
    last_seen: Time


@dataclass(frozen=True)
class LeaderInfo:
    """Who holds the lease: its epoch (greater than every earlier one) and deadline."""

    server_id: str
    url: str
    epoch: int
    since: Time
    deadline: Annotated[Time | None, Meta(description="null with one server (SQLite)")]


@dataclass(frozen=True)
class Servers:
    """`GET /api/v1/servers`: this server's role, who leads, every server seen."""

    server_id: str
    role: Literal["leader", "standby"]
    epoch: int | None
    leader: LeaderInfo | None
    servers: list[ServerInfo]


ANSWERS: tuple[type, ...] = (
    Servers,
    Error,
    Alive,
    Version,
    Stats,
    JobList,
    JobAnswer,
    Reload,
    RunPage,
    RunAnswer,
    RunLog,
    RunMeta,
    Dependencies,
    AgentList,
    Checks,
)


# -- JSON -------------------------------------------------------------------------

_JSON = msgspec.json.Encoder()


def encode(value: object) -> bytes:
    """The JSON of an answer (or a feed message): compact UTF-8.

    Text that is not valid Unicode (a lone surrogate kept in the store by an older
    version) has no UTF-8: such an answer is ASCII JSON instead, the odd character
    escaped (`"\\ud800"`), never an error that hides every run. Numbers that are not
    finite are null, as msgspec writes them.
    """
    try:
        return _JSON.encode(value)
    except UnicodeEncodeError:
        plain = _finite(msgspec.to_builtins(value))
        return json.dumps(plain, separators=(",", ":"), allow_nan=False).encode()


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
