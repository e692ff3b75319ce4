"""Loading the installed plugins: entry points of the `apsis.*` groups into `Extensions`.

The edge of the extension mechanism (docs/extending.md): the server at start and
`check-jobs` call `load_extensions` once. A plugin that cannot be imported, has the
wrong shape, or takes a name already registered is logged, with its name, and not
used; the rest load.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points

from apsis_server.core.extensions import BadPlugin, Extensions, Kind

log = logging.getLogger(__name__)

EntryPoints = Callable[[str], Iterable[EntryPoint]]


def _installed() -> EntryPoints:
    """The installed packages' entry points by group, read once (a read scans every
    installed distribution)."""
    every = entry_points()
    return lambda group: every.select(group=group)


@dataclass(frozen=True)
class Loaded:
    """The registries, with the plugins that loaded; and why the others did not."""

    extensions: Extensions
    problems: list[str] = field(default_factory=list)
    loaded: list[str] = field(default_factory=list)  # "group: name (value)"


def _origin(point: EntryPoint) -> str:
    dist = getattr(point, "dist", None)
    package = f" from {dist.name}" if dist is not None else ""
    return f"entry point {point.group}:{point.name} ({point.value}){package}"


def load_extensions(find: EntryPoints | None = None) -> Loaded:
    """The built-in types and every installed plugin's, each plugin registered once;
    `find(group)`: the entry points of a group (default: the installed packages')."""
    find = find or _installed()
    extensions = Extensions()
    loaded = Loaded(extensions)
    for kind in Kind:
        # Sorted, so which of two plugins giving one name wins never depends on order.
        for point in sorted(find(kind.value), key=lambda p: (p.name, p.value)):
            origin = _origin(point)
            try:
                obj = point.load()
                extensions.add(kind, point.name, obj, origin)
            except BadPlugin as exc:
                loaded.problems.append(f"plugin not used: {exc}")
            except Exception as exc:  # whatever importing someone's package raises
                why = f"{type(exc).__name__}: {exc}"
                loaded.problems.append(f"plugin not used: {origin}: cannot load: {why}")
            else:
                loaded.loaded.append(f"{kind.value}: {point.name} ({point.value})")
    for problem in loaded.problems:
        log.error("%s", problem)
    for entry in loaded.loaded:
        log.info("plugin loaded: %s", entry)
    return loaded
