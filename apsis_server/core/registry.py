"""A registry of one kind of type (programs, schedules, ...): built-ins and plugins by name.

Each kind module fills one with its built-in types; the plugins loaded at the edge
(`apsis_server/plugins.py`) are added to the same registry, which refuses a name
that is already taken. Job files find a type only here: nothing is imported by
the name a job file gives.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

from apsis_server.core.fields import FieldError, Fields, Invalid

E = TypeVar("E")
T = TypeVar("T")

BUILTIN = "built-in"


class NameTaken(ValueError):
    """A type name already in the registry (a built-in's or another plugin's)."""


class Registry(Generic[E], Mapping[str, E]):
    """Entries by type name, each with where it came from (`built-in` or a plugin's
    entry point). Filled once when the server or `check-jobs` starts, then only read."""

    def __init__(self, kind: str, builtins: Mapping[str, E] | None = None) -> None:
        self.kind = kind
        self._entries: dict[str, E] = {}
        self._origins: dict[str, str] = {}
        for name, entry in (builtins or {}).items():
            self.register(name, entry, BUILTIN)

    def register(self, name: str, entry: E, origin: str) -> None:
        """Add a type; NameTaken if the name is already registered."""
        if name in self._entries:
            raise NameTaken(
                f"{self.kind} type {name!r} of {origin} is already registered by "
                f"{self._origins[name]}"
            )
        self._entries[name] = entry
        self._origins[name] = origin

    def origin(self, name: str) -> str:
        """`built-in`, or the entry point a plugin type came from."""
        return self._origins[name]

    def plugins(self) -> dict[str, E]:
        """The entries that came from plugins."""
        return {n: e for n, e in self._entries.items() if self._origins[n] != BUILTIN}

    def __getitem__(self, name: str) -> E:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


def plugin_call(what: str, path: str, call: Callable[[], T]) -> T:
    """A plugin's answer; its `Invalid` as it is, any other exception (a bug in the
    plugin) as an `Invalid` at `path` naming the plugin, so one plugin never stops a
    job directory from loading."""
    try:
        return call()
    except Invalid:
        raise
    except Exception as exc:
        raise Invalid([FieldError(path, f"{what} failed: {type(exc).__name__}: {exc}")]) from None


def plugin_parse(what: str, f: Fields, parse: Callable[[Fields], T]) -> T:
    """`parse(f)` by a plugin, as `plugin_call`. When it fails, the keys it did not
    get to read are not reported as unknown too: its own error says what is wrong."""
    try:
        return plugin_call(what, f.path, lambda: parse(f))
    except Invalid:
        f.allow(*(str(k) for k in f.data))
        raise
