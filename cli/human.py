"""Values as people read them: signal names, byte sizes, durations, programs and run
metadata in words, never as the API's raw JSON or long floats.

Plain text in, plain text out (no rich markup): `render.py` lays it out.
"""

from __future__ import annotations

import datetime
import shlex
import signal as signals
import zoneinfo
from collections.abc import Iterable, Mapping
from typing import Any

# Metadata keys that hold a duration in seconds, and those that hold bytes (run
# metadata and its rusage; `maxrss` is KiB on Linux).
SECONDS = frozenset({"elapsed", "utime", "stime", "duration", "grace", "grace_period"})
BYTES = frozenset({"output_length", "memory", "memory_peak", "memory_max"})
KIB = frozenset({"maxrss"})


def span(seconds: float) -> str:
    """`0.3 ms`, `12 ms`, `4.2s`, `10m`, `1h 30m`, `2d 4h`: rounded, no trailing zeros."""
    if seconds < 0.001:
        return "0s" if seconds <= 0 else f"{seconds * 1000:.1g} ms"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 10:
        return f"{seconds:.1f}".removesuffix(".0") + "s"
    whole = round(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if whole >= size:
            parts.append(f"{whole // size}{unit}")
            whole %= size
    return " ".join(parts[:2])


def signal_name(value: object) -> str:
    """`SIGTERM` for 15 (or "15", or "SIGTERM"); other values as they are."""
    if isinstance(value, bool):
        return str(value)
    try:
        return signals.Signals(int(str(value))).name
    except ValueError:
        return str(value)


def size(count: float) -> str:
    """`812 B`, `10.4 KiB`, `3 MiB`, `1.5 GiB`."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            text = f"{value:.0f}" if unit == "B" else f"{value:.1f}".removesuffix(".0")
            return f"{text} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def number(value: float) -> str:
    """A count or measure without float noise: `3`, `0.25`, `1.5e+06`."""
    return str(int(value)) if float(value).is_integer() else f"{value:.4g}"


def zone_time(t: float, zone: str) -> str | None:
    """`09:30:00 EST`: the time in `zone`; None if the zone is unknown here, or
    shows the same wall clock as local time then."""
    try:
        there = datetime.datetime.fromtimestamp(t, zoneinfo.ZoneInfo(zone))
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return None
    here = datetime.datetime.fromtimestamp(t).astimezone()
    if there.utcoffset() == here.utcoffset():
        return None
    return there.strftime("%H:%M:%S %Z")


def command_line(argv: Iterable[str]) -> str:
    return shlex.join(argv)


def _timeout(timeout: Mapping[str, Any]) -> str:
    after = span(float(timeout.get("duration") or 0))
    return f"after {after}, with {signal_name(timeout.get('signal', 15))}"


def _stop(stop: Mapping[str, Any]) -> str:
    grace = stop.get("grace_period", stop.get("grace"))
    then = f", then SIGKILL after {span(float(grace))}" if grace is not None else ""
    return f"{signal_name(stop.get('signal', 15))}{then}"


def _env(env: Mapping[str, Any]) -> str:
    names = ", ".join(f"{k}={v}" for k, v in (env.get("vars") or {}).items())
    base = "inherited" if env.get("inherit", True) else "empty"
    return f"{base}, with {names}" if names else base


def _resources(resources: Mapping[str, Any]) -> str:
    words = []
    if resources.get("memory") is not None:
        words.append(f"memory {size(float(resources['memory']))}")
    if resources.get("cpu") is not None:
        words.append(f"{number(float(resources['cpu']))} CPU")
    if resources.get("pids") is not None:
        words.append(f"{resources['pids']} processes")
    return ", ".join(words)


def program_fields(program: Mapping[str, Any]) -> list[tuple[str, str]]:
    """A job's or a run's program as (what, words) pairs: the command first."""
    kind = str(program.get("type") or "?")
    if program.get("command") is not None:
        first = f"{program['command']}  ({kind})"
    elif program.get("argv") is not None:
        first = f"{command_line(str(a) for a in program['argv'])}  ({kind})"
    elif kind == "no-op":
        outcome = "succeeds" if program.get("success", True) else "fails"
        first = f"no-op: {outcome} after {span(float(program.get('duration') or 0))}"
    else:
        first = str(program.get("internal") or kind)
    fields = [("program", first)]
    fields += [(k, str(program[k])) for k in ("host", "user", "cwd") if program.get(k)]
    timeout = program.get("timeout")
    if isinstance(timeout, Mapping):
        fields.append(("timeout", _timeout(timeout)))
    elif isinstance(timeout, int | float):
        fields.append(("timeout", f"after {span(float(timeout))}"))
    if isinstance(program.get("stop"), Mapping):
        fields.append(("stop with", _stop(program["stop"])))
    if isinstance(program.get("env"), Mapping):
        fields.append(("environment", _env(program["env"])))
    if isinstance(program.get("resources"), Mapping):
        fields.append(("resources", _resources(program["resources"])))
    known = {"type", "command", "argv", "host", "user", "cwd", "timeout", "stop", "env"}
    known |= {"resources", "internal", "duration", "success"}
    fields += [(k, plain(v)) for k, v in program.items() if k not in known and v is not None]
    return fields


def meta_value(key: str, value: Any) -> str:
    """One metadata value in words (`rusage` and other mappings key by key)."""
    if isinstance(value, Mapping):
        return ", ".join(f"{k} {meta_value(str(k), v)}" for k, v in value.items())
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if key == "signal" or key.endswith("_signal"):
        return signal_name(value)
    if not isinstance(value, int | float):
        return plain(value)
    if key in SECONDS:
        return span(float(value))
    if key in BYTES or key.endswith("_bytes"):
        return size(float(value))
    if key in KIB:
        return size(float(value) * 1024)
    return number(float(value))


def plain(value: Any) -> str:
    """Any JSON value as short text: `a=1, b=2`, `x, y`."""
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={plain(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ", ".join(plain(v) for v in value)
    if isinstance(value, float):
        return number(value)
    return "" if value is None else str(value)
