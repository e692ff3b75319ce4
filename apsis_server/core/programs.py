"""Programs: what a job runs, parsed from its file and bound to one run's args."""

from __future__ import annotations

import signal as _signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol, TypeVar

from apsis_common.protocol import StderrMode
from apsis_server.core.fields import (
    Collector,
    FieldError,
    Fields,
    Invalid,
    boolean,
    byte_size,
    duration,
    positive_duration,
    positive_integer,
    string,
    string_map,
    strings,
)
from apsis_server.core.registry import Registry, plugin_parse

T = TypeVar("T")


def is_template(value: Any) -> bool:
    """Whether a field's value is a template, kept as text until a run is bound."""
    return isinstance(value, str) and "{" in value


def or_template(convert: Callable[[Any, str], T]) -> Callable[[Any, str], T | str]:
    """`convert`, or a template kept as its text: the earlier Apsis expanded every
    field of a program when a run was bound, numbers and signals too. The text is
    converted by the same `convert` when bound (`core/bound.py`)."""

    def convert_or_keep(value: Any, path: str) -> T | str:
        return value if is_template(value) else convert(value, path)

    return convert_or_keep


def signal_number(value: Any, path: str) -> int:
    """A signal from `SIGTERM`, `TERM` or a number."""
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 < value < _signal.NSIG:
            return value
    elif isinstance(value, str):
        name = value.strip().upper()
        name = name if name.startswith("SIG") else "SIG" + name
        sig = getattr(_signal.Signals, name, None)
        if isinstance(sig, _signal.Signals):
            return int(sig)
        if value.strip().isascii() and value.strip().isdigit():
            return signal_number(int(value), path)
    raise Invalid([FieldError(path, f"expected a signal like SIGTERM, got {value!r}")])


@dataclass(frozen=True)
class Stop:
    """How a run is stopped; either field may be a template (text), expanded when bound."""

    signal: int | str = int(_signal.SIGTERM)
    grace_period: float | str = 60.0


@dataclass(frozen=True)
class Timeout:
    """`duration` is seconds, `signal` a number; either may be a template (text),
    giving a duration or a signal when the run is bound."""

    duration: float | str
    signal: int | str = int(_signal.SIGTERM)


@dataclass(frozen=True)
class Resources:
    """Limits of a run's cgroup, on agents that can make one: memory in bytes,
    CPUs (1.5 is one and a half), tasks (processes and threads)."""

    memory: int | None = None
    cpu: float | None = None
    pids: int | None = None

    def to_plain(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if v is not None}


# What an agent accepts: below a MiB nothing starts, and CPUs have a share.
MIN_MEMORY = 1 << 20
CPU_RANGE = (0.01, 4096.0)


@dataclass(frozen=True)
class Program:
    """A program as written in the job file: text fields may hold templates.

    `type` is `shell` (command run by bash), `program` (argv, no shell), `no-op`,
    or `internal.archive|vacuum|stats` (run by the server itself, with `options`).
    The earlier scheduler's names for these are mapped to them when parsed.
    """

    type: str
    command: str | None = None
    argv: tuple[str, ...] = ()
    host: str | None = None
    user: str | None = None
    timeout: Timeout | None = None
    stop: Stop = Stop()
    env_inherit: bool = True
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None
    resources: Resources | None = None
    # Kept apart from stdout (the default), or merged into it in the order written.
    stderr: StderrMode = StderrMode.SEPARATE
    duration: float | str = 0.0  # a no-op's; text is a template
    success: bool = True
    # The keys of an `internal.*` housekeeping program.
    options: Mapping[str, Any] = field(default_factory=dict)
    # A plugin type's own keys, as written (shown in the API; the plugin read them).
    plugin_keys: Mapping[str, Any] = field(default_factory=dict)

    def template_fields(self) -> list[tuple[str, str]]:
        """(key path, text) of every templated field, for validation."""
        out = [("command", self.command)] if self.command is not None else []
        # A plugin type's argv comes from its own keys: errors name the key written.
        out += [
            (_written_at(a, self.plugin_keys) or f"argv[{i}]", a) for i, a in enumerate(self.argv)
        ]
        out += [(f"env.vars.{k}", v) for k, v in self.env.items()]
        out += [
            (k, v)
            for k, v in (("host", self.host), ("user", self.user), ("cwd", self.cwd))
            if v is not None
        ]
        templated: list[tuple[str, Any]] = [
            ("duration", self.duration),
            ("stop.signal", self.stop.signal),
            ("stop.grace_period", self.stop.grace_period),
            *self.options.items(),
        ]
        if self.timeout is not None:
            templated += [
                ("timeout.duration", self.timeout.duration),
                ("timeout.signal", self.timeout.signal),
            ]
        out += [(k, v) for k, v in templated if isinstance(v, str)]
        return out

    def to_plain(self) -> dict[str, Any]:
        """The program as shown in the API."""
        if self.type == "no-op":
            return {"type": "no-op", "duration": self.duration, "success": self.success}
        if self.type in INTERNAL_TYPES:
            return {"type": self.type, **self.options}
        out: dict[str, Any] = {"type": self.type, **self.plugin_keys}
        if self.command is not None:
            out["command"] = self.command
        else:
            out["argv"] = list(self.argv)
        for key in ("host", "user", "cwd"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.timeout is not None:
            out["timeout"] = {"duration": self.timeout.duration, "signal": self.timeout.signal}
        out["stop"] = {"signal": self.stop.signal, "grace_period": self.stop.grace_period}
        if self.env or not self.env_inherit:
            out["env"] = {"inherit": self.env_inherit, "vars": dict(self.env)}
        if self.resources is not None:
            out["resources"] = self.resources.to_plain()
        out["stderr"] = self.stderr.value
        return out


def _written_at(text: str, written: Any, path: str = "") -> str | None:
    """The key path of the first value in `written` (a plugin's keys) that is `text`."""
    if isinstance(written, str):
        return path if written == text and path else None
    if isinstance(written, Mapping):
        pairs = [(f"{path}.{k}" if path else str(k), v) for k, v in written.items()]
    elif isinstance(written, list):
        pairs = [(f"{path}[{i}]", v) for i, v in enumerate(written)]
    else:
        return None
    for at, value in pairs:
        found = _written_at(text, value, at)
        if found is not None:
            return found
    return None


def _stop(value: Any, path: str) -> Stop:
    f = Fields(value, path)
    stop = Stop(
        signal=f.take("signal", or_template(signal_number), int(_signal.SIGTERM)),
        grace_period=f.take("grace_period", or_template(duration), 60.0),
    )
    f.done()
    return stop


def _timeout(value: Any, path: str) -> Timeout:
    if not isinstance(value, Mapping):
        return Timeout(duration=or_template(positive_duration)(value, path))
    f = Fields(value, path)
    timeout = Timeout(
        duration=f.need("duration", or_template(positive_duration)),
        signal=f.take("signal", or_template(signal_number), int(_signal.SIGTERM)),
    )
    f.done()
    return timeout


def _memory(value: Any, path: str) -> int:
    size = byte_size(value, path)
    if size < MIN_MEMORY:
        raise Invalid([FieldError(path, f"expected at least 1 MiB, got {value!r}")])
    return size


def _cpus(value: Any, path: str) -> float:
    low, high = CPU_RANGE
    if isinstance(value, int | float) and not isinstance(value, bool) and low <= value <= high:
        return float(value)
    raise Invalid([FieldError(path, f"expected a number of CPUs like 1.5, got {value!r}")])


def _resources(value: Any, path: str) -> Resources | None:
    f = Fields(value, path)
    c = Collector()
    resources = Resources(
        memory=c(lambda: f.take("memory", _memory, None), None),
        cpu=c(lambda: f.take("cpu", _cpus, None), None),
        pids=c(lambda: f.take("pids", positive_integer, None), None),
    )
    c(f.done, None)
    c.check()
    return resources if resources != Resources() else None


def _stderr(value: Any, path: str) -> StderrMode:
    if isinstance(value, str) and value in tuple(StderrMode):
        return StderrMode(value)
    expected = " or ".join(m.value for m in StderrMode)
    raise Invalid([FieldError(path, f"expected {expected}, got {value!r}")])


def _env(value: Any, path: str) -> tuple[bool, dict[str, str]]:
    f = Fields(value, path)
    result = (f.take("inherit", boolean, True), f.take("vars", string_map, {}))
    f.done()
    return result


_COMPAT = {
    "agent": "program",
    "agent-shell": "shell",
    "procstar": "program",
    "procstar-shell": "shell",
}

# The earlier scheduler's Python-path program names, by class name. Nothing is
# imported from them: they are names for our own types.
_PYTHON_PATHS = {
    "ProcessProgram": "program",
    "ShellCommandProgram": "shell",
    "AgentProgram": "program",
    "AgentShellProgram": "shell",
    "ProcstarProgram": "program",
    "ProcstarShellProgram": "shell",
    "NoOpProgram": "no-op",
    "ArchiveProgram": "internal.archive",
    "VacuumProgram": "internal.vacuum",
    "StatsProgram": "internal.stats",
}

INTERNAL_TYPES = ("internal.archive", "internal.vacuum", "internal.stats")
PROGRAM_TYPES = ("shell", "program", "no-op", *_COMPAT, *INTERNAL_TYPES)

# Reads a program type's keys into a `Program`; `compat` says the job file used one
# of the earlier scheduler's names for it (which allow its key names too).
ProgramParser = Callable[[Fields, Collector, bool], Program]


def program_type(kind: str, path: str, registry: Mapping[str, Any] | None = None) -> str:
    """The program type a job file's `type` names (compat and Python-path names mapped)."""
    known = program_registry() if registry is None else registry
    if kind in known:
        return _COMPAT.get(kind, kind)
    module, _, name = kind.rpartition(".")
    if module.startswith("apsis.program") and name in _PYTHON_PATHS:
        return _PYTHON_PATHS[name]
    expected = ", ".join(known)
    raise Invalid([FieldError(path, f"unknown program type {kind!r} (expected {expected})")])


# The keys of housekeeping programs that are not text, with their converters: a
# template in one is kept as text and converted by the same converter when bound.
INTERNAL_VALUES: Mapping[str, Callable[[Any, str], Any]] = {
    "age": duration,
    "count": positive_integer,
    "chunk_size": positive_integer,
    "chunk_sleep": duration,
}


def _internal(f: Fields, kind: str, c: Collector) -> dict[str, Any]:
    """The keys of a housekeeping program, which the server itself runs."""
    options: dict[str, Any] = {}
    if kind == "internal.archive":
        no_age: float | str = 0.0
        options["age"] = c(lambda: f.need("age", or_template(duration)), no_age)
        for key in ("count", "chunk_size", "chunk_sleep"):
            convert = or_template(INTERNAL_VALUES[key])
            options[key] = c(partial(f.take, key, convert, None), None)
        options["path"] = c(lambda: f.take("path", string, None), None)
    elif kind == "internal.stats":
        options["path"] = c(lambda: f.take("path", string, None), None)
    return {k: v for k, v in options.items() if v is not None}


def _command(f: Fields, kind: str, c: Collector) -> tuple[str | None, tuple[str, ...]]:
    if kind == "shell":
        return c(lambda: f.need("command", string), ""), ()
    no_argv: tuple[str, ...] = ("",)
    argv = c(lambda: f.need("argv", strings), no_argv)
    if not argv:
        c.errors.append(FieldError(f.at("argv"), "expected a non-empty argv list"))
    return None, argv


def parse_program(
    value: Any, path: str = "program", registry: Registry[ProgramParser] | None = None
) -> Program:
    """A program from its YAML form (a string is `shell`, a list is `program`).

    `registry`: the program types by name (default: the built-in ones).
    """
    if isinstance(value, str):
        return Program(type="shell", command=value)
    if isinstance(value, list):
        argv = strings(value, path)
        if not argv:
            raise Invalid([FieldError(path, "expected a non-empty argv list")])
        return Program(type="program", argv=argv)
    types = program_registry() if registry is None else registry
    f = Fields(value, path, "a program (a mapping, a string or a list)")
    written = f.need("type", string)
    kind = program_type(written, f.at("type"), types)
    c = Collector()
    parser = types[written] if written in types else types[kind]
    program = parser(f, c, written in _COMPAT or "." in written)
    c(f.done, None)
    c.check()
    return program


def _no_op(f: Fields, c: Collector, compat: bool) -> Program:
    no_time: float | str = 0.0
    return Program(
        type="no-op",
        duration=c(lambda: f.take("duration", or_template(duration), no_time), no_time),
        success=c(lambda: f.take("success", boolean, True), True),
    )


def _internal_program(kind: str) -> ProgramParser:
    def parse(f: Fields, c: Collector, compat: bool) -> Program:
        return Program(type=kind, options=_internal(f, kind, c))

    return parse


def _process_type(kind: str) -> ProgramParser:
    def parse(f: Fields, c: Collector, compat: bool) -> Program:
        return _process(f, kind, compat, c)

    return parse


def program_registry() -> Registry[ProgramParser]:
    """A registry of the built-in program types, for plugins to be added to."""
    builtins: dict[str, ProgramParser] = {
        "shell": _process_type("shell"),
        "program": _process_type("program"),
        "no-op": _no_op,
        **{name: _process_type(kind) for name, kind in _COMPAT.items()},
        **{kind: _internal_program(kind) for kind in INTERNAL_TYPES},
    }
    return Registry("program", builtins)


def _process(f: Fields, kind: str, compat: bool, c: Collector) -> Program:
    command, argv = _command(f, kind, c)
    return Program(type=kind, command=command, argv=argv, **_process_keys(f, compat, c))


def _process_keys(f: Fields, compat: bool, c: Collector) -> dict[str, Any]:
    """The keys every process program has: where, as whom, how long, how stopped."""
    no_env: tuple[bool, dict[str, str]] = (True, {})
    env_inherit, env = c(lambda: f.take("env", _env, no_env), no_env)
    host = c(lambda: f.take("host", string, None), None)
    user = c(lambda: f.take("user", string, None), None)
    if compat:
        # The earlier scheduler's names for the same things.
        host = c(lambda: f.take("group_id", string, host), host)
        user = c(lambda: f.take("sudo_user", string, user), user)
    return {
        "host": host,
        "user": user,
        "timeout": c(lambda: f.take("timeout", _timeout, None), None),
        "stop": c(lambda: f.take("stop", _stop, Stop()), Stop()),
        "env_inherit": env_inherit,
        "env": env,
        "cwd": c(lambda: f.take("cwd", string, None), None),
        "resources": c(lambda: f.take("resources", _resources, None), None),
        "stderr": c(lambda: f.take("stderr", _stderr, StderrMode.SEPARATE), StderrMode.SEPARATE),
    }


# -- plugin program types ------------------------------------------------------------


@dataclass(frozen=True)
class ProcessSpec:
    """What a plugin program type makes of its keys: the process to run. Its text may
    hold templates, expanded when each run is bound, like a built-in program's."""

    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None


class ProgramType(Protocol):
    """A program type from a plugin (entry point group `apsis.programs`).

    `parse` reads the type's own keys from `fields` (`fields.need`, `fields.take`)
    and returns the process to run; it raises `Invalid` for a bad value. Apsis reads
    the keys every process program has (`host`, `user`, `timeout`, `stop`, `env`,
    `cwd`, `resources`) itself, and reports keys nobody read as unknown.
    """

    def parse(self, fields: Fields) -> ProcessSpec: ...


def _checked_spec(spec: object, name: str, path: str) -> ProcessSpec:
    if not isinstance(spec, ProcessSpec):
        got = type(spec).__name__
        raise Invalid(
            [FieldError(path, f"{name} program plugin returned {got}, not a ProcessSpec")]
        )
    argv_ok = isinstance(spec.argv, tuple | list) and all(isinstance(a, str) for a in spec.argv)
    env_ok = all(isinstance(k, str) and isinstance(v, str) for k, v in dict(spec.env).items())
    if not (argv_ok and spec.argv and env_ok and isinstance(spec.cwd, str | None)):
        message = f"{name} program plugin gave a bad process (argv, env, cwd): {spec!r}"
        raise Invalid([FieldError(path, message)])
    return ProcessSpec(tuple(spec.argv), dict(spec.env), spec.cwd)


def plugin_program(name: str, plugin: ProgramType) -> ProgramParser:
    """The parser of a plugin program type, for the program registry."""

    def parse(f: Fields, c: Collector, compat: bool) -> Program:
        common = _process_keys(f, compat=False, c=c)
        known = f.taken()
        spec = c(
            lambda: _checked_spec(
                plugin_parse(f"{name} program plugin", f, plugin.parse),
                name,
                f.path,
            ),
            None,
        )
        own = {str(k): v for k, v in f.data.items() if k not in known and k != "type"}
        if spec is None:
            return Program(type=name, argv=("",), plugin_keys=own, **common)
        common["env"] = {**spec.env, **common["env"]}  # the job's env wins
        common["cwd"] = common["cwd"] if common["cwd"] is not None else spec.cwd
        return Program(type=name, argv=spec.argv, plugin_keys=own, **common)

    return parse
