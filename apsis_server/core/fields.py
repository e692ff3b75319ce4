"""Reading checked values out of parsed YAML, with the key path in every error."""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from apsis_common.errors import BadInput
from apsis_common.times import parse_duration

T = TypeVar("T")
D = TypeVar("D")


@dataclass(frozen=True)
class FieldError:
    """What is wrong, and where: `key_path` like `schedule[1].daytime`."""

    key_path: str
    message: str

    def __str__(self) -> str:
        return f"{self.key_path}: {self.message}" if self.key_path else self.message


class Invalid(BadInput):
    """One or more field errors."""

    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__("; ".join(str(e) for e in errors))
        self.errors = errors


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


class Fields:
    """A mapping being read: every key must be taken, or it is reported as unknown."""

    def __init__(self, data: object, path: str = "", what: str = "a mapping") -> None:
        if not isinstance(data, Mapping):
            raise Invalid([FieldError(path, f"expected {what}, got {_kind(data)}")])
        self.data: Mapping[Any, Any] = data
        self.path = path
        self._taken: set[Any] = set()

    def at(self, key: str | int) -> str:
        return _join(self.path, key)

    def has(self, key: str) -> bool:
        return key in self.data

    def raw(self, key: str, default: Any = None) -> Any:
        self._taken.add(key)
        return self.data.get(key, default)

    def take(self, key: str, convert: Callable[[Any, str], T], default: D) -> T | D:
        """The converted value at `key`, or `default` when absent."""
        self._taken.add(key)
        if key not in self.data:
            return default
        return convert(self.data[key], self.at(key))

    def need(self, key: str, convert: Callable[[Any, str], T]) -> T:
        """The converted value at `key`, which must be there."""
        self._taken.add(key)
        if key not in self.data:
            raise Invalid([FieldError(self.at(key), "missing")])
        return convert(self.data[key], self.at(key))

    def taken(self) -> frozenset[Any]:
        """The keys read (or allowed) so far."""
        return frozenset(self._taken)

    def allow(self, *keys: str) -> None:
        """Count `keys` as known though they are not read (another form's keys)."""
        self._taken.update(keys)

    def done(self) -> None:
        """Raise for keys nobody took, naming the keys that are known here."""
        unknown = [k for k in self.data if k not in self._taken]
        if unknown:
            known = sorted(str(k) for k in self._taken)
            expected = f"expected one of: {', '.join(known)}" if known else "expected no keys"
            message = f"unknown key ({expected})"
            raise Invalid([FieldError(self.at(str(k)), message) for k in unknown])


def _kind(value: object) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), f"{type(value).__name__} {value!r}"
    )


def string(value: Any, path: str) -> str:
    """Text; a number, or an unquoted date (`2024-12-25`, as YAML reads it), as its text."""
    if isinstance(value, datetime.date) and not isinstance(value, datetime.datetime):
        return value.isoformat()  # what was written: YAML dates are only YYYY-MM-DD
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        hint = " (quote it)" if isinstance(value, datetime.datetime) else ""
        raise Invalid([FieldError(path, f"expected a string, got {_kind(value)}{hint}")])
    return str(value)


# YAML 1.1's words for booleans, as PyYAML (and the earlier scheduler) read them. Job
# files are read with only true/false as booleans (so `args: {answer: no}` is the
# text "no"); a field that takes a boolean accepts these words itself.
_BOOLEAN_WORDS: Mapping[str, bool] = {
    **{w: True for word in ("true", "yes", "on") for w in (word, word.title(), word.upper())},
    **{w: False for word in ("false", "no", "off") for w in (word, word.title(), word.upper())},
}


def boolean_word(value: Any) -> bool | None:
    """The boolean `value` is or names (`true`, `yes`, `On`, `NO`, ...); else None."""
    if isinstance(value, bool):
        return value
    return _BOOLEAN_WORDS.get(value) if isinstance(value, str) else None


def boolean(value: Any, path: str) -> bool:
    """`true`/`false`, or YAML 1.1's `yes`/`no`/`on`/`off` (lower, Title or UPPER case)."""
    found = boolean_word(value)
    if found is None:
        got = repr(value) if isinstance(value, str) else _kind(value)
        raise Invalid([FieldError(path, f"expected true or false (or yes/no, on/off), got {got}")])
    return found


def duration(value: Any, path: str) -> float:
    try:
        return parse_duration(value)
    except BadInput as exc:
        raise Invalid([FieldError(path, str(exc))]) from None


def positive_duration(value: Any, path: str) -> float:
    seconds = duration(value, path)
    if seconds <= 0:
        raise Invalid([FieldError(path, f"expected a positive duration, got {value!r}")])
    return seconds


def signed_duration(value: Any, path: str) -> float:
    """A duration that may be negative: `-2m`, `- 90s`, `-120`, or any `duration`."""
    if isinstance(value, str) and value.strip().startswith("-"):
        return -duration(value.strip()[1:], path)
    if isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
        return -duration(-value, path)
    return duration(value, path)


def strings(value: Any, path: str) -> tuple[str, ...]:
    """A list of strings; a single string is a list of one."""
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list):
        raise Invalid([FieldError(path, f"expected a list of strings, got {_kind(value)}")])
    return tuple(string(v, _join(path, i)) for i, v in enumerate(value))


def string_map(value: Any, path: str) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise Invalid([FieldError(path, f"expected a mapping, got {_kind(value)}")])
    return {string(k, path): string(v, _join(path, str(k))) for k, v in value.items()}


def items(value: Any, path: str) -> Iterator[tuple[Any, str]]:
    """The items of a list (a single mapping is a list of one), with their paths."""
    if isinstance(value, list):
        for i, item in enumerate(value):
            yield item, _join(path, i)
    else:
        yield value, path


def collect(parsers: list[Callable[[], None]]) -> None:
    """Run every parser, raising all their errors together."""
    errors: list[FieldError] = []
    for parse in parsers:
        try:
            parse()
        except Invalid as exc:
            errors.extend(exc.errors)
    if errors:
        raise Invalid(errors)


def integer(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
            return int(value)
        raise Invalid([FieldError(path, f"expected an integer, got {_kind(value)}")])
    return value


def positive_integer(value: Any, path: str) -> int:
    number = integer(value, path)
    if number < 1:
        raise Invalid([FieldError(path, f"expected a positive integer, got {number}")])
    return number


def port_number(value: Any, path: str) -> int:
    """A TCP port: an integer from 1 to 65535."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise Invalid([FieldError(path, f"expected a port number (1-65535), got {value!r}")])
    return value


def choice(*choices: str) -> Callable[[Any, str], str]:
    """A converter accepting only the given strings."""

    def convert(value: Any, path: str) -> str:
        text = string(value, path)
        if text not in choices:
            expected = " or ".join(repr(c) for c in choices)
            raise Invalid([FieldError(path, f"expected {expected}, got {text!r}")])
        return text

    return convert


class Collector:
    """Runs parsing steps, keeping every error, so a file's errors come out together."""

    def __init__(self) -> None:
        self.errors: list[FieldError] = []

    def __call__(self, step: Callable[[], T], default: T) -> T:
        """The step's result, or `default` after recording its errors."""
        try:
            return step()
        except Invalid as exc:
            self.errors.extend(exc.errors)
            return default

    def check(self) -> None:
        """Raise every error recorded so far."""
        if self.errors:
            raise Invalid(list(self.errors))


_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 10**6,
    "mb": 10**6,
    "mib": 2**20,
    "g": 10**9,
    "gb": 10**9,
    "gib": 2**30,
}


def byte_size(value: Any, path: str) -> int:
    """Bytes from `1048576`, `"64 MiB"`, `"100 MB"` or `"512k"`."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str):
        number = value.strip().rstrip("bBiIkKmMgG ").strip()
        unit = value.strip()[len(number) :].strip().lower()
        try:
            if unit in _SIZE_UNITS and number:
                return int(float(number) * _SIZE_UNITS[unit])
        except ValueError:
            pass
    raise Invalid([FieldError(path, f"expected a size like 64 MiB, got {value!r}")])


P = TypeVar("P")


def typed(value: Any, path: str, what: str, parsers: Mapping[str, P]) -> tuple[Fields, P]:
    """The fields of a mapping with a `type` key, and the parser its type names."""
    f = Fields(value, path, f"{what} (a mapping with a type)")
    kind = f.need("type", string)
    parser = parsers.get(kind)
    if parser is None:
        expected = ", ".join(parsers)
        noun = what.split()[-1]
        raise Invalid(
            [FieldError(f.at("type"), f"unknown {noun} type {kind!r} (expected {expected})")]
        )
    return f, parser
