"""The agent wire protocol, defined once: every message as a frozen dataclass.

Messages travel as msgpack (JSON is accepted for debugging). `encode` turns a
message into bytes and `decode(cls, data)` checks every field's type on the way
back, so handlers only ever see well-formed values; anything else raises
`ProtocolError` (→ 400).

Events from agent to server form a tagged union (`Event`), each carried in an
`Envelope` with the agent's sequence number.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import signal as _signal
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import msgpack

from apsis_common.errors import ProtocolError

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

    def digest(self) -> str:
        """A stable hash: the same spec under the same proc id is the same start."""
        return hashlib.sha256(encode_json(self)).hexdigest()


@dataclass(frozen=True)
class StartProc:
    proc_id: str
    spec: ProcSpec


@dataclass(frozen=True)
class StartBatch:
    """`POST /procs`: start several processes in one request."""

    procs: tuple[StartProc, ...]


@dataclass(frozen=True)
class StartResult:
    """`accepted` (new), `exists` (same spec, already known), or `refused` with `error`.

    A process that had started when the answer was written comes with the facts
    of its `proc.started` event (`pid`, `pgid`, `start_time`); the event follows
    anyway, through the outbox.
    """

    proc_id: str
    status: str
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
class ExitInfo:
    status: int
    exit_code: int | None
    signal: int | None
    core_dump: bool
    rusage: dict[str, float]
    end_time: float


@dataclass(frozen=True)
class ProcSummary:
    """One process as the agent knows it; `state` is starting|running|exited|failed|lost."""

    proc_id: str
    state: str
    pid: int | None
    output_length: int
    exit: ExitInfo | None = None
    error: str | None = None
    labels: dict[str, str] = field(default_factory=dict)


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


# -- agent → server (webhook) ---------------------------------------------------


@dataclass(frozen=True)
class AgentStarted:
    TYPE: ClassVar[str] = "agent.started"
    epoch: int
    recovered: int


@dataclass(frozen=True)
class ProcStarted:
    TYPE: ClassVar[str] = "proc.started"
    proc_id: str
    pid: int
    pgid: int
    start_time: float


@dataclass(frozen=True)
class ProcStartFailed:
    TYPE: ClassVar[str] = "proc.start_failed"
    proc_id: str
    error: str


@dataclass(frozen=True)
class ProcOutput:
    TYPE: ClassVar[str] = "proc.output"
    proc_id: str
    fd: int
    offset: int
    data: bytes


@dataclass(frozen=True)
class ProcSignaled:
    """`reason` is stop|escalation|timeout|request."""

    TYPE: ClassVar[str] = "proc.signaled"
    proc_id: str
    signal: int
    reason: str


@dataclass(frozen=True)
class ProcExited:
    TYPE: ClassVar[str] = "proc.exited"
    proc_id: str
    exit: ExitInfo
    output_length: int


@dataclass(frozen=True)
class ProcLost:
    """`reason` is reboot|shim_vanished|pid_reused."""

    TYPE: ClassVar[str] = "proc.lost"
    proc_id: str
    reason: str


Event = (
    AgentStarted | ProcStarted | ProcStartFailed | ProcOutput | ProcSignaled | ProcExited | ProcLost
)
EVENT_TYPES: dict[str, type[Any]] = {
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
    """`POST /agent/v1/events`; an empty batch is a heartbeat."""

    agent_id: str
    epoch: int
    events: tuple[Envelope, ...]


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


# -- encoding ---------------------------------------------------------------------


def _to_plain(value: Any) -> Any:
    encoder = _ENCODERS.get(type(value))
    if encoder is not None:
        return encoder(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _encoder(type(value))(value)
    if isinstance(value, tuple | list):
        return [_to_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    return value


_ENCODERS: dict[type[Any], Callable[[Any], Any]] = {}
_SCALARS = (str, int, float, bool, bytes, type(None))


def _encoder(cls: type[Any]) -> Callable[[Any], Any]:
    """A function making plain dicts of `cls`'s instances, built once per class."""
    names = tuple(f.name for f in dataclasses.fields(cls))
    tag = getattr(cls, "TYPE", None)

    def encode(value: Any) -> dict[str, Any]:
        out = {}
        for name in names:
            v = getattr(value, name)
            out[name] = v if type(v) in _SCALARS else _to_plain(v)
        if tag is not None:
            out["type"] = tag
        return out

    _ENCODERS[cls] = encode
    return encode


def to_plain(message: Any) -> Any:
    """The message as plain dicts, lists and scalars."""
    return _to_plain(message)


def encode(message: Any) -> bytes:
    """msgpack bytes of a message."""
    return msgpack.packb(_to_plain(message), use_bin_type=True)


def encode_json(message: Any) -> bytes:
    """JSON bytes of a message without bytes fields (specs, bootstrap lines)."""
    return json.dumps(_to_plain(message), sort_keys=True, separators=(",", ":")).encode()


T = TypeVar("T")


def decode(cls: type[T], data: bytes, content_type: str = MSGPACK) -> T:
    """A message of type `cls` from msgpack (or JSON) bytes; ProtocolError if malformed."""
    try:
        if content_type.startswith(JSON):
            plain = json.loads(data)
        else:
            plain = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:
        raise ProtocolError(f"body does not decode: {exc}") from None
    return from_plain(cls, plain)


def from_plain(cls: type[T], plain: Any) -> T:
    """A message of type `cls` from plain values, every field type checked."""
    try:
        return typing.cast(T, _converter(cls)(plain))
    except _Bad as bad:
        raise ProtocolError(f"{cls.__name__}{''.join(reversed(bad.path))}: {bad.message}") from None


class _Bad(Exception):
    """A value of the wrong shape; `path` grows (innermost first) on the way out."""

    def __init__(self, message: str) -> None:
        self.message = message
        self.path: list[str] = []


Converter = Callable[[Any], Any]
_CONVERTERS: dict[Any, Converter] = {}


def _converter(tp: Any) -> Converter:
    """The checking converter for type `tp`, built once: decoding a message then
    runs straight-line code instead of taking its type hints apart again."""
    conv = _CONVERTERS.get(tp)
    if conv is None:
        conv = _CONVERTERS[tp] = _build(tp)
    return conv


def _expected(tp: Any, value: Any) -> _Bad:
    name = getattr(tp, "__name__", str(tp))
    return _Bad(f"expected {name}, got {type(value).__name__}")


def _build(tp: Any) -> Converter:
    origin = typing.get_origin(tp)
    if tp is typing.Any:
        return lambda value: value
    if origin in (typing.Union, types.UnionType):
        return _build_union(typing.get_args(tp))
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _build_dataclass(tp)
    if origin is tuple:
        return _build_tuple(_converter(typing.get_args(tp)[0]))
    if origin is dict:
        kt, vt = (_converter(t) for t in typing.get_args(tp))
        return _build_dict(kt, vt)
    return _build_scalar(tp)


def _build_tuple(item: Converter) -> Converter:
    def convert_tuple(value: Any) -> Any:
        if not isinstance(value, list | tuple):
            raise _Bad(f"expected a list, got {type(value).__name__}")
        out = []
        for i, v in enumerate(value):  # the path is only made for an error
            try:
                out.append(item(v))
            except _Bad as bad:
                bad.path.append(f"[{i}]")
                raise
        return tuple(out)

    return convert_tuple


def _build_dict(kt: Converter, vt: Converter) -> Converter:
    def convert_dict(value: Any) -> Any:
        if not isinstance(value, dict):
            raise _Bad(f"expected a mapping, got {type(value).__name__}")
        out = {}
        for k, v in value.items():
            try:
                key = kt(k)
            except _Bad as bad:
                bad.path.append(" key")
                raise
            try:
                out[key] = vt(v)
            except _Bad as bad:
                bad.path.append(f"[{k!r}]")
                raise
        return out

    return convert_dict


def _float(value: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise _expected(float, value)


def _int(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise _expected(int, value)


def _bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):  # JSON has no bytes
        return value.encode("utf-8", "surrogateescape")
    raise _expected(bytes, value)


_SCALARS_IN: dict[Any, Converter] = {float: _float, int: _int, bytes: _bytes}


def _build_scalar(tp: Any) -> Converter:
    known = _SCALARS_IN.get(tp)
    if known is not None:
        return known
    exact = tp in (str, bool, type(None))

    def convert_exact(value: Any) -> Any:
        if exact and isinstance(value, tp):
            return value
        raise _expected(tp, value)

    return convert_exact


def _build_union(options: tuple[Any, ...]) -> Converter:
    optional = type(None) in options
    tagged = {t: _converter(t) for t in options if t in EVENT_TYPES.values()}
    others = [_converter(o) for o in options if o is not type(None)]

    def convert_union(value: Any) -> Any:
        if value is None and optional:
            return None
        if tagged and isinstance(value, dict) and "type" in value:
            tag = EVENT_TYPES.get(value["type"])
            if tag is not None and tag in tagged:
                return tagged[tag](value)
        first: _Bad | None = None
        for conv in others:
            try:
                return conv(value)
            except _Bad as bad:
                first = first or bad
        raise first or _Bad(f"unexpected {value!r}")

    return convert_union


def _build_dataclass(cls: type[Any]) -> Converter:
    hints = typing.get_type_hints(cls)
    fields = [
        (
            f.name,
            _converter(hints[f.name]),
            f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,
        )
        for f in dataclasses.fields(cls)
    ]

    def convert_dataclass(value: Any) -> Any:
        if not isinstance(value, dict):
            raise _Bad(f"expected a mapping, got {type(value).__name__}")
        kwargs: dict[str, Any] = {}
        for name, conv, required in fields:
            if name in value:
                try:
                    kwargs[name] = conv(value[name])
                except _Bad as bad:
                    bad.path.append(f".{name}")
                    raise
            elif required:
                raise _Bad(f"missing field {name!r}")
        return cls(**kwargs)

    return convert_dataclass
