"""Extensions: the registries of program, schedule, condition and action types and of
template functions, which built-ins fill and plugins add to (docs/extending.md).

Pure: the plugins' objects are handed in (`apsis_server/plugins.py` reads them from
the installed packages' entry points); each is checked for its shape and adapted to
its registry here. A plugin author imports the Protocols and values named in
`__all__` from this module.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from apsis_common.states import State
from apsis_server.core.actions import (
    ActionCall,
    ActionParser,
    ActionType,
    action_registry,
    plugin_action,
)
from apsis_server.core.calendars import Calendar
from apsis_server.core.conditions import (
    ConditionCheck,
    ConditionParser,
    ConditionType,
    condition_registry,
    plugin_condition,
)
from apsis_server.core.fields import FieldError, Fields, Invalid
from apsis_server.core.programs import (
    ProcessSpec,
    ProgramParser,
    ProgramType,
    plugin_program,
    program_registry,
)
from apsis_server.core.registry import NameTaken, Registry
from apsis_server.core.runs import Run
from apsis_server.core.schedules import (
    ScheduleParser,
    ScheduleRule,
    ScheduleType,
    plugin_schedule,
    schedule_registry,
)
from apsis_server.core.templates import default_helpers
from apsis_server.core.verdicts import RunsView, Verdict, VerdictKind

__all__ = [
    "ActionCall",
    "ActionType",
    "ConditionCheck",
    "ConditionType",
    "Extensions",
    "FieldError",
    "Fields",
    "Invalid",
    "Kind",
    "ProcessSpec",
    "ProgramType",
    "Run",
    "RunsView",
    "ScheduleRule",
    "ScheduleType",
    "State",
    "Verdict",
    "VerdictKind",
]


class Kind(enum.StrEnum):
    """The kinds of extension, by their entry point group."""

    PROGRAMS = "apsis.programs"
    SCHEDULES = "apsis.schedules"
    CONDITIONS = "apsis.conditions"
    ACTIONS = "apsis.actions"
    TEMPLATE_FUNCTIONS = "apsis.template_functions"


class BadPlugin(ValueError):
    """A plugin that cannot be used: the wrong shape, or a name already taken."""


TemplateFunction = Callable[..., Any]


def _template_functions() -> Registry[TemplateFunction]:
    return Registry("template function", default_helpers())


@dataclass(frozen=True)
class Extensions:
    """One registry per kind, each holding the built-in types and then the plugins'."""

    programs: Registry[ProgramParser] = field(default_factory=program_registry)
    schedules: Registry[ScheduleParser] = field(default_factory=schedule_registry)
    conditions: Registry[ConditionParser] = field(default_factory=condition_registry)
    actions: Registry[ActionParser] = field(default_factory=action_registry)
    template_functions: Registry[TemplateFunction] = field(default_factory=_template_functions)

    def add(self, kind: Kind, name: str, plugin: object, origin: str) -> None:
        """Register a plugin's type or template function under `name`; `BadPlugin`
        (saying why) when it has not the shape of its kind or the name is taken.

        A class is instantiated with no arguments first (template functions aside).
        """
        if not name or not name.strip() or name != name.strip():
            raise BadPlugin(f"{origin}: {name!r} is not a usable name")
        if kind == Kind.TEMPLATE_FUNCTIONS:
            if not callable(plugin):
                raise BadPlugin(f"{origin}: a template function must be callable")
            if not name.isidentifier():
                raise BadPlugin(f"{origin}: {name!r} is not a name templates can use")
            self._register(self.template_functions, name, plugin, origin)
            return
        if isinstance(plugin, type):
            try:
                plugin = plugin()
            except Exception as exc:
                raise BadPlugin(f"{origin}: cannot make one: {type(exc).__name__}: {exc}") from None
        if not callable(getattr(plugin, "parse", None)):
            raise BadPlugin(f"{origin}: expected an object with a parse(fields) method")
        # Its shape is checked as far as it can be before a job uses it; what `parse`
        # returns is checked each time (`plugin_program`, ...).
        if kind == Kind.PROGRAMS:
            if name.startswith(("apsis.", "internal.")):
                raise BadPlugin(f"{origin}: {name!r} is reserved for built-in program types")
            self._register(
                self.programs, name, plugin_program(name, cast(ProgramType, plugin)), origin
            )
        elif kind == Kind.SCHEDULES:
            self._register(
                self.schedules, name, plugin_schedule(name, cast(ScheduleType, plugin)), origin
            )
        elif kind == Kind.CONDITIONS:
            self._register(
                self.conditions, name, plugin_condition(name, cast(ConditionType, plugin)), origin
            )
        else:
            self._register(
                self.actions, name, plugin_action(name, cast(ActionType, plugin)), origin
            )

    @staticmethod
    def _register(registry: Registry[Any], name: str, entry: object, origin: str) -> None:
        try:
            registry.register(name, entry, origin)
        except NameTaken as exc:
            raise BadPlugin(str(exc)) from None

    def helpers(self, calendars: Mapping[str, Calendar] | None = None) -> dict[str, Any]:
        """The names templates see: the built-in helpers (knowing `calendars`) and the
        plugins' template functions."""
        return {**self.template_functions.plugins(), **default_helpers(calendars)}
