"""A program bound to one run: every template expanded, as typed values.

A run keeps its bound program from the moment it leaves `scheduled`, whatever a
reload does to its job meanwhile. There are three kinds: a process an agent runs
(`shell` and `program` both become one, a shell command being `bash -c COMMAND`),
a no-op that finishes on a timer, and an internal program the server runs itself.
The store keeps a bound program as plain JSON (`to_plain`, `from_plain`), in a
form that stays readable across versions.
"""

from __future__ import annotations

import enum
import signal as _signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from apsis_common.protocol import StderrMode
from apsis_server.core.fields import Invalid, duration, positive_duration
from apsis_server.core.programs import (
    INTERNAL_VALUES,
    Program,
    Resources,
    Timeout,
    signal_number,
)
from apsis_server.core.templates import TemplateError, Templates

T = TypeVar("T")

# Output kept per run: the head and the tail, each half of this.
DEFAULT_OUTPUT_MAX = 64 * 1024 * 1024


class InternalKind(enum.StrEnum):
    """The housekeeping programs the server runs itself."""

    ARCHIVE = "internal.archive"
    VACUUM = "internal.vacuum"
    STATS = "internal.stats"


@dataclass(frozen=True)
class BoundTimeout:
    """Stop the process with `signal` this many seconds after it starts."""

    duration: float
    signal: int = int(_signal.SIGTERM)


@dataclass(frozen=True)
class BoundProcess:
    """A process for an agent to run, on `host` (a host, alias or group; the local
    agent if None) as `user`."""

    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    env_inherit: bool = True
    cwd: str | None = None
    host: str | None = None
    user: str | None = None
    timeout: BoundTimeout | None = None
    stop_signal: int = int(_signal.SIGTERM)
    stop_grace: float = 60.0
    output_max: int = DEFAULT_OUTPUT_MAX
    resources: Resources | None = None
    stderr: StderrMode = StderrMode.SEPARATE


@dataclass(frozen=True)
class BoundNoOp:
    """Nothing to run: it finishes after `duration` seconds, as `success` says."""

    duration: float = 0.0
    success: bool = True


@dataclass(frozen=True)
class BoundInternal:
    """A housekeeping program the server runs itself, with its options."""

    kind: InternalKind
    options: Mapping[str, Any] = field(default_factory=dict)


BoundProgram = BoundProcess | BoundNoOp | BoundInternal


class BindError(ValueError):
    """The program could not be bound to the run (a template failed)."""


def _converted(
    value: T | str, convert: Callable[[Any, str], T], path: str, expand: Callable[[str], str]
) -> T:
    """A field that is not text: as parsed, or its template expanded and converted
    as the job file's value would have been (BindError if the result is bad)."""
    if not isinstance(value, str):
        return value
    try:
        return convert(expand(value), path)
    except Invalid as exc:
        raise BindError(f"{exc} (from the template {value!r})") from None


def bind(program: Program, templates: Templates, scope: Mapping[str, Any]) -> BoundProgram:
    """The program for one run, every template expanded, and the fields that are not
    text converted: a template giving a bad value raises BindError, which says so."""

    def expand(text: str) -> str:
        try:
            return templates.expand(text, scope)
        except TemplateError as exc:
            raise BindError(str(exc)) from None

    if program.type == "no-op":
        seconds = _converted(program.duration, duration, "program.duration", expand)
        return BoundNoOp(seconds, program.success)
    if program.type in tuple(InternalKind):
        return BoundInternal(InternalKind(program.type), _options(program.options, expand))
    argv: tuple[str, ...]
    if program.command is not None:
        argv = ("/bin/bash", "-c", expand(program.command))
    else:
        argv = tuple(expand(a) for a in program.argv)
    env = {k: expand(v) for k, v in program.env.items()}
    env["APSIS_RUN_ID"] = str(scope.get("run_id", ""))
    env["APSIS_JOB_ID"] = str(scope.get("job_id", ""))
    for name, value in scope.get("args", {}).items():
        env[f"APSIS_ARG_{name.upper()}"] = value
    return BoundProcess(
        argv=argv,
        env=env,
        env_inherit=program.env_inherit,
        cwd=expand(program.cwd) if program.cwd is not None else None,
        host=expand(program.host) if program.host is not None else None,
        user=expand(program.user) if program.user is not None else None,
        timeout=_bound_timeout(program.timeout, expand),
        stop_signal=_converted(program.stop.signal, signal_number, "program.stop.signal", expand),
        stop_grace=_converted(
            program.stop.grace_period, duration, "program.stop.grace_period", expand
        ),
        resources=program.resources,
        stderr=program.stderr,
    )


def _options(options: Mapping[str, Any], expand: Callable[[str], str]) -> dict[str, Any]:
    """A housekeeping program's options: text expanded, the other keys converted."""
    out = {}
    for key, value in options.items():
        convert = INTERNAL_VALUES.get(key)
        if convert is None:
            out[key] = expand(value) if isinstance(value, str) else value
        else:
            out[key] = _converted(value, convert, f"program.{key}", expand)
    return out


def _bound_timeout(timeout: Timeout | None, expand: Callable[[str], str]) -> BoundTimeout | None:
    if timeout is None:
        return None
    return BoundTimeout(
        _converted(timeout.duration, positive_duration, "program.timeout.duration", expand),
        _converted(timeout.signal, signal_number, "program.timeout.signal", expand),
    )


# -- the stored form ---------------------------------------------------------------------


def to_plain(program: BoundProgram) -> dict[str, Any]:
    """The program as the store keeps it (JSON values)."""
    if isinstance(program, BoundNoOp):
        return {"type": "no-op", "duration": program.duration, "success": program.success}
    if isinstance(program, BoundInternal):
        return {"type": program.kind.value, **program.options}
    timeout = program.timeout
    # `resources` only when there are any: the stored form of other runs stays as it was.
    limits = {} if program.resources is None else {"resources": program.resources.to_plain()}
    return {
        **limits,
        "output_max": program.output_max,
        "type": "process",
        "argv": list(program.argv),
        "env": dict(program.env),
        "env_inherit": program.env_inherit,
        "cwd": program.cwd,
        "host": program.host,
        "user": program.user,
        "timeout": None
        if timeout is None
        else {"duration": timeout.duration, "signal": timeout.signal},
        "stop": {"signal": program.stop_signal, "grace": program.stop_grace},
        "stderr": program.stderr.value,
    }


def from_plain(plain: Mapping[str, Any]) -> BoundProgram:
    """A program as `to_plain` wrote it (this version or an earlier one)."""
    kind = plain["type"]
    if kind == "no-op":
        return BoundNoOp(float(plain.get("duration", 0.0)), bool(plain.get("success", True)))
    if kind in tuple(InternalKind):
        return BoundInternal(InternalKind(kind), {k: v for k, v in plain.items() if k != "type"})
    timeout = plain.get("timeout")
    stop = plain.get("stop") or {}
    limits = plain.get("resources")
    return BoundProcess(
        argv=tuple(plain["argv"]),
        env=dict(plain.get("env") or {}),
        env_inherit=bool(plain.get("env_inherit", True)),
        cwd=plain.get("cwd"),
        host=plain.get("host"),
        user=plain.get("user"),
        timeout=None
        if not timeout
        else BoundTimeout(float(timeout["duration"]), int(timeout["signal"])),
        stop_signal=int(stop.get("signal", _signal.SIGTERM)),
        stop_grace=float(stop.get("grace", 60.0)),
        output_max=int(plain.get("output_max", DEFAULT_OUTPUT_MAX)),
        resources=None if not limits else _resources(limits),
        # Runs stored before stdout and stderr were kept apart merged them.
        stderr=StderrMode(plain.get("stderr", StderrMode.MERGE)),
    )


def _resources(plain: Mapping[str, Any]) -> Resources:
    memory, cpu, pids = plain.get("memory"), plain.get("cpu"), plain.get("pids")
    return Resources(
        memory=None if memory is None else int(memory),
        cpu=None if cpu is None else float(cpu),
        pids=None if pids is None else int(pids),
    )
