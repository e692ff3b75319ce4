"""The agent wire protocol, defined once: every message as a frozen dataclass.

Messages travel as msgpack (JSON is accepted for debugging); `apsis_common.codec`
turns them into bytes and back, checking every field's type, so handlers only
ever see well-formed values. This module holds the shapes alone and imports no
codec, so the server's pure core may use them.

Every name with a fixed set of values on the wire is a `StrEnum`. Events from
agent to server form a union (`Event`) tagged by their `TYPE` (the `type` key on
the wire), each carried in an `Envelope` with the agent's sequence number.
"""

from __future__ import annotations

import enum
import signal as _signal
from dataclasses import dataclass, field
from typing import ClassVar

MSGPACK = "application/msgpack"
JSON = "application/json"

# Request bodies larger than this are refused before any signature check.
MAX_REQUEST_BYTES = 8 * 1024 * 1024
# The webhook carries output, so it may be larger.
MAX_WEBHOOK_BYTES = 32 * 1024 * 1024
# Largest output chunk in one event.
MAX_OUTPUT_CHUNK = 256 * 1024


# -- server → agent ---------------------------------------------------------------


@dataclass(frozen=True)
class StopSpec:
    """How to stop a process: signal the group, wait `grace` seconds, SIGKILL."""

    signal: int = int(_signal.SIGTERM)
    grace: float = 60.0


@dataclass(frozen=True)
class TimeoutSpec:
    """After `duration` seconds from start, stop the process with `signal`."""

    duration: float
    signal: int = int(_signal.SIGTERM)


@dataclass(frozen=True)
class Resources:
    """Limits of a run's cgroup, where the agent can make one: memory in bytes,
    CPUs (1.5 = one and a half), and tasks (processes and threads)."""

    memory: int | None = None
    cpu: float | None = None
    pids: int | None = None


class StderrMode(enum.StrEnum):
    """Where a program's stderr goes."""

    SEPARATE = "separate"  # a file of its own (`stderr`), sent as events with fd 2
    MERGE = "merge"  # the same file as stdout, in the order the program wrote


def kept(length: int, cap: int) -> tuple[tuple[int, int], ...]:
    """The byte ranges of a stream of `length` bytes that are sent and stored under
    `output_max` = `cap`: all of it, or, over the cap, its first and its last half.

    Whether a stream goes over the cap is known only once its program has ended:
    until then only the head, `kept(size, cap)[0]` clipped to the size, is sent.
    """
    if length <= cap:
        return ((0, length),)
    return ((0, cap - cap // 2), (length - cap // 2, length))


@dataclass(frozen=True)
class ProcSpec:
    """What to run. The agent starts it at most once per proc id."""

    argv: tuple[str, ...]
    cwd: str | None = None
    env_inherit: bool = True
    env: dict[str, str] = field(default_factory=dict)
    stop: StopSpec = StopSpec()
    timeout: TimeoutSpec | None = None
    output_max: int = 64 * 1024 * 1024
    labels: dict[str, str] = field(default_factory=dict)
    # New in this version: older agents ignore it (they decode unknown keys away).
    resources: Resources | None = None
    # Run it with the agent user's login environment (apsis_agent/login.py): for
    # agents of a user other than the server's. Older agents ignore it.
    login_env: bool = False
    # Older agents ignore it and merge; an older server leaves it out: merged, as it
    # expects.
    stderr: StderrMode = StderrMode.MERGE


@dataclass(frozen=True)
class StartProc:
    proc_id: str
    spec: ProcSpec
    # The agent's event sequence (`AgentInfo.instance`) the start was first sent to,
    # if known: an agent whose state was reset since (another sequence) refuses it,
    # as it may have started it before. Older agents ignore it.
    instance: str = ""


@dataclass(frozen=True)
class StartBatch:
    """`POST /procs`: start several processes in one request."""

    procs: tuple[StartProc, ...]


class StartStatus(enum.StrEnum):
    """What became of one start."""

    ACCEPTED = "accepted"  # new: the process is starting
    EXISTS = "exists"  # the same spec under this proc id is already known
    REFUSED = "refused"  # never started; `error` says why


@dataclass(frozen=True)
class StartResult:
    """`accepted` (new), `exists` (same spec, already known), or `refused` with `error`.

    A process that had started when the answer was written comes with the facts
    of its `proc.started` event (`pid`, `pgid`, `start_time`); the event follows
    anyway, through the outbox.
    """

    proc_id: str
    status: StartStatus
    error: str | None = None
    pid: int | None = None
    pgid: int | None = None
    start_time: float | None = None


@dataclass(frozen=True)
class StartResults:
    results: tuple[StartResult, ...]


@dataclass(frozen=True)
class SignalRequest:
    signal: int


@dataclass(frozen=True)
class StopRequest:
    """Stop now; fields left None take the values of the process's `StopSpec`."""

    signal: int | None = None
    grace: float | None = None


@dataclass(frozen=True)
class LeaderNotice:
    """`PUT /leader?leader_epoch=N`: the server sending it leads under epoch N (the
    agent refuses older leaders from now on) and takes the events at `webhook_url`."""

    webhook_url: str


@dataclass(frozen=True)
class ExitInfo:
    status: int
    exit_code: int | None
    signal: int | None
    core_dump: bool
    rusage: dict[str, float]
    end_time: float


class ProcState(enum.StrEnum):
    """Where a process is, as the agent sees it."""

    STARTING = "starting"
    RUNNING = "running"
    EXITED = "exited"
    FAILED = "failed"  # could not be started
    LOST = "lost"

    @property
    def final(self) -> bool:
        """The process will not change any more."""
        return self in (ProcState.EXITED, ProcState.FAILED, ProcState.LOST)


@dataclass(frozen=True)
class ProcSummary:
    """One process as the agent knows it."""

    proc_id: str
    state: ProcState
    pid: int | None
    output_length: int  # stdout's (with stderr, when merged)
    exit: ExitInfo | None = None
    error: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    stderr_length: int = 0  # a separate stderr's


@dataclass(frozen=True)
class ProcList:
    procs: tuple[ProcSummary, ...]


@dataclass(frozen=True)
class AgentInfo:
    agent_id: str
    epoch: int
    version: str
    pid: int
    user: str
    hostname: str
    boot_id: str
    running: int
    outbox_pending: int
    acked_seq: int
    max_procs: int
    draining: bool
    # Its event sequence (`EventBatch.instance`): another one than before means its
    # state was reset. Older agents leave it out.
    instance: str = ""


# -- agent → server (webhook) ---------------------------------------------------


class EventType(enum.StrEnum):
    """The tag of each event (its `type` key on the wire)."""

    AGENT_STARTED = "agent.started"
    PROC_STARTED = "proc.started"
    PROC_START_FAILED = "proc.start_failed"
    PROC_OUTPUT = "proc.output"
    PROC_SIGNALED = "proc.signaled"
    PROC_EXITED = "proc.exited"
    PROC_LOST = "proc.lost"


class SignalReason(enum.StrEnum):
    """Why the agent signalled a process's group."""

    STOP = "stop"  # a stop request
    ESCALATION = "escalation"  # SIGKILL: the grace period of a stop or timeout ran out
    TIMEOUT = "timeout"  # the spec's timeout
    REQUEST = "request"  # a signal request


class LostReason(enum.StrEnum):
    """Why the agent lost track of a process."""

    REBOOT = "reboot"  # the host rebooted
    SHIM_VANISHED = "shim_vanished"  # its shim died without recording an exit
    PID_REUSED = "pid_reused"  # its shim's pid belongs to another process now


@dataclass(frozen=True)
class AgentStarted:
    TYPE: ClassVar[EventType] = EventType.AGENT_STARTED
    epoch: int
    recovered: int


@dataclass(frozen=True)
class ProcStarted:
    TYPE: ClassVar[EventType] = EventType.PROC_STARTED
    proc_id: str
    pid: int
    pgid: int
    start_time: float


@dataclass(frozen=True)
class ProcStartFailed:
    TYPE: ClassVar[EventType] = EventType.PROC_START_FAILED
    proc_id: str
    error: str


@dataclass(frozen=True)
class ProcOutput:
    TYPE: ClassVar[EventType] = EventType.PROC_OUTPUT
    proc_id: str
    fd: int  # 1: stdout (with stderr, when merged); 2: a separate stderr
    offset: int  # in that stream
    data: bytes


@dataclass(frozen=True)
class ProcSignaled:
    TYPE: ClassVar[EventType] = EventType.PROC_SIGNALED
    proc_id: str
    signal: int
    reason: SignalReason


@dataclass(frozen=True)
class ProcExited:
    TYPE: ClassVar[EventType] = EventType.PROC_EXITED
    proc_id: str
    exit: ExitInfo
    output_length: int  # stdout's (with stderr, when merged)
    stderr_length: int = 0  # a separate stderr's


@dataclass(frozen=True)
class ProcLost:
    TYPE: ClassVar[EventType] = EventType.PROC_LOST
    proc_id: str
    reason: LostReason


Event = (
    AgentStarted | ProcStarted | ProcStartFailed | ProcOutput | ProcSignaled | ProcExited | ProcLost
)
EVENT_TYPES: dict[EventType, type[Event]] = {
    cls.TYPE: cls
    for cls in (
        AgentStarted,
        ProcStarted,
        ProcStartFailed,
        ProcOutput,
        ProcSignaled,
        ProcExited,
        ProcLost,
    )
}


@dataclass(frozen=True)
class Envelope:
    seq: int
    event: Event


@dataclass(frozen=True)
class EventBatch:
    """`POST /agent/v1/events`; an empty batch is a heartbeat.

    `instance` names the agent's event sequence (made with its outbox: a wiped
    state dir starts a new one at 1) and `acked` is the highest sequence number the
    agent holds as acknowledged: together they let the server tell a sequence that
    restarted, or its own ack left behind by a restore, from a lost acknowledgement.
    `info` (at most once a heartbeat period) is what `GET /agent` answers, so the
    server need not ask each agent for it: an older agent leaves it out (and is
    asked), an older server decodes it away.
    """

    agent_id: str
    epoch: int
    events: tuple[Envelope, ...]
    instance: str = ""
    acked: int = 0
    info: AgentInfo | None = None


@dataclass(frozen=True)
class Ack:
    """The highest contiguous sequence number the server has durably applied."""

    acked_seq: int


# -- bootstrap (lines of JSON over stdin/stdout, local or over SSH) --------------


@dataclass(frozen=True)
class BootstrapHello:
    """Server → agent: who you are, your secret, where to report, whom to trust."""

    agent_id: str
    key_id: str
    secret: str  # hex
    webhook_url: str
    ca_pem: str
    hosts: tuple[str, ...]  # names the server will use to reach the agent


@dataclass(frozen=True)
class BootstrapCsr:
    """Agent → server: a certificate request for the agent's own key."""

    csr_pem: str


@dataclass(frozen=True)
class BootstrapCert:
    """Server → agent: the agent's certificate, issued by the server's CA."""

    cert_pem: str


@dataclass(frozen=True)
class BootstrapReady:
    """Agent → server: the daemon is up (started or attached)."""

    port: int
    pid: int
    epoch: int
    version: str
    attached: bool
