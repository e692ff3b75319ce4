"""Conditions: parsing and checking what a run waits for (evaluation is elsewhere).

Each condition is a frozen value with the keys of spec/01-jobs.md; text fields may
hold templates, expanded when the run is bound. `template_fields` lists them so the
job loader can check them at load time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

from apsis_common.states import FINISHED, State
from apsis_server.core.fields import (
    Collector,
    FieldError,
    Fields,
    Invalid,
    boolean,
    boolean_word,
    choice,
    items,
    positive_duration,
    positive_integer,
    string,
    string_map,
    typed,
)
from apsis_server.core.lifecycle import SOURCES
from apsis_server.core.registry import Registry, plugin_parse
from apsis_server.core.runs import Run
from apsis_server.core.verdicts import RunsView, Verdict, VerdictKind

_STATE_NAMES = ", ".join(s.value for s in State)


def state(value: Any, path: str) -> State:
    """A run state by name (`success`, `failure`, ...)."""
    text = string(value, path)
    try:
        return State(text.strip().lower())
    except ValueError:
        raise Invalid(
            [FieldError(path, f"expected a run state ({_STATE_NAMES}), got {text!r}")]
        ) from None


def states(value: Any, path: str) -> tuple[State, ...]:
    """One state or a list of states, without duplicates, in the order given."""
    c = Collector()
    listed = value if isinstance(value, list) else [value]
    if not listed:
        raise Invalid([FieldError(path, "expected at least one run state")])
    found = [c(partial(state, v, p), State.ERROR) for v, p in items(listed, path)]
    c.check()
    return tuple(dict.fromkeys(found))


def finished_states(value: Any, path: str) -> tuple[State, ...]:
    """States a finished run can be in."""
    found = states(value, path)
    bad = [s.value for s in found if s not in FINISHED]
    if bad:
        raise Invalid([FieldError(path, f"expected finished states, got {', '.join(bad)}")])
    return found


def can_reach(targets: tuple[State, ...]) -> tuple[State, ...]:
    """Every state from which a run can still end up in one of `targets`."""
    reached = set(targets)
    while True:
        more = {src for dst in reached for src in SOURCES[dst]} - reached
        if not more:
            return tuple(s for s in State if s in reached)
        reached |= more


@dataclass(frozen=True)
class DependencyCondition:
    """Wait until a run of `job_id` with `args` is in one of `states`.

    Params the other job shares with this one, and that `args` does not give, take
    this run's args (at bind time). With `exist`, the run errors at once when no run
    of the other job is in one of the `exist` states. With `max_wait`, the run stops
    waiting for it after so long and ends `on_timeout`.
    """

    job_id: str
    args: Mapping[str, str] = field(default_factory=dict)
    states: tuple[State, ...] = (State.SUCCESS,)
    exist: tuple[State, ...] | None = None
    # Give up after waiting so long for it: the run ends `on_timeout` (error or skipped).
    max_wait: float | None = None
    on_timeout: State = State.ERROR
    type: str = field(default="dependency", init=False)

    def template_fields(self) -> list[tuple[str, str]]:
        return [("job_id", self.job_id), *((f"args.{k}", v) for k, v in self.args.items())]


@dataclass(frozen=True)
class MaxRunningCondition:
    """Wait while `count` or more runs of the job (with the same args, for `per: args`)
    are starting or running. `count` is an int, or a template giving one."""

    count: int | str = 1
    per: str = "args"
    job_id: str | None = None  # another job's runs to count (the earlier scheduler's key)
    args: Mapping[str, str] | None = None
    type: str = field(default="max_running", init=False)

    def template_fields(self) -> list[tuple[str, str]]:
        out = [("count", self.count)] if isinstance(self.count, str) else []
        out += [("job_id", self.job_id)] if self.job_id is not None else []
        return out + [(f"args.{k}", v) for k, v in (self.args or {}).items()]


@dataclass(frozen=True)
class ConstCondition:
    """Always true or always false; for tests."""

    value: bool = True
    type: str = field(default="const", init=False)

    def template_fields(self) -> list[tuple[str, str]]:
        return []


@dataclass(frozen=True)
class SkipDuplicateCondition:
    """If another run of the same job and args is in `check_states`, finish this one
    in `target_state`."""

    check_states: tuple[State, ...] = (State.WAITING, State.STARTING, State.RUNNING)
    target_state: State = State.SKIPPED
    type: str = field(default="skip_duplicate", init=False)

    def template_fields(self) -> list[tuple[str, str]]:
        return []


class ConditionCheck(Protocol):
    """What a plugin condition type makes of its keys: a check of a waiting run."""

    def check(self, run: Run, view: RunsView, expand: Callable[[str], str]) -> Verdict:
        """`ready` (this condition holds), `wait` (with what is awaited, and in
        `watch` the job ids whose runs changing may change the answer), `skip` or
        `error`. `view` reads other runs; `expand` expands a template in the run's
        scope (its args, `run_id`, `job_id`)."""


@dataclass(frozen=True)
class PluginCondition:
    """A condition of a plugin type: `form` is its keys as written (for the API)."""

    type: str
    condition: ConditionCheck = field(compare=False)
    form: Mapping[str, Any] = field(default_factory=dict)

    def template_fields(self) -> list[tuple[str, str]]:
        return []

    def verdict(self, run: Run, view: RunsView, expand: Callable[[str], str]) -> Verdict | None:
        """None when it holds; else what the plugin says (an exception is an error)."""
        try:
            verdict = self.condition.check(run, view, expand)
        except Exception as exc:
            return Verdict(VerdictKind.ERROR, f"{self.type} condition failed: {exc!r}")
        if not isinstance(verdict, Verdict):
            message = f"{self.type} condition answered {verdict!r}, not a Verdict"
            return Verdict(VerdictKind.ERROR, message)
        return None if verdict.kind == VerdictKind.READY else verdict


Condition = (
    DependencyCondition
    | MaxRunningCondition
    | ConstCondition
    | SkipDuplicateCondition
    | PluginCondition
)


def _exist(value: Any, path: str) -> tuple[State, ...] | None:
    flag = boolean_word(value)
    if flag is not None:
        return None if not flag else ()  # () stands for "computed from states"
    return states(value, path)


def _dependency(f: Fields, c: Collector) -> Condition:
    success: tuple[State, ...] = (State.SUCCESS,)
    targets = c(lambda: f.take("states", states, success), success)
    exist = c(lambda: f.take("exist", _exist, None), None)
    if exist == ():
        # `exist: true`: any run that can still get to a target state will do.
        exist = can_reach(targets)
    elif exist is not None and not set(targets) <= set(exist):
        c.errors.append(FieldError(f.at("exist"), "exist must include every state in states"))
    no_args: dict[str, str] = {}
    on_timeout = c(lambda: f.take("on_timeout", choice(*_ON_TIMEOUT), "error"), "error")
    return DependencyCondition(
        job_id=c(lambda: f.need("job_id", string), ""),
        args=c(lambda: f.take("args", string_map, no_args), no_args),
        states=targets,
        exist=exist,
        max_wait=c(lambda: f.take("max_wait", positive_duration, None), None),
        on_timeout=_ON_TIMEOUT[on_timeout],
    )


_ON_TIMEOUT = {"error": State.ERROR, "skip": State.SKIPPED}


def _count(value: Any, path: str) -> int | str:
    if isinstance(value, str) and "{" in value:
        return value
    return positive_integer(value, path)


def _max_running(f: Fields, c: Collector) -> Condition:
    one: int | str = 1
    return MaxRunningCondition(
        count=c(lambda: f.take("count", _count, one), one),
        per=c(lambda: f.take("per", choice("args", "job"), "args"), "args"),
        job_id=c(lambda: f.take("job_id", string, None), None),
        args=c(lambda: f.take("args", string_map, None), None),
    )


def _skip_duplicate(f: Fields, c: Collector) -> Condition:
    default = SkipDuplicateCondition()
    target = c(lambda: f.take("target_state", state, State.SKIPPED), State.SKIPPED)
    if target not in (State.SKIPPED, State.ERROR):
        # A run that never started can only be skipped or in error (spec/02-runs.md).
        c.errors.append(
            FieldError(
                f.at("target_state"),
                f"expected a finished state a run that never started can take (skipped or "
                f"error), got {target}",
            )
        )
    return SkipDuplicateCondition(
        check_states=c(lambda: f.take("check_states", states, default.check_states), ()),
        target_state=target,
    )


def _const(f: Fields, c: Collector) -> Condition:
    return ConstCondition(c(lambda: f.take("value", boolean, True), True))


ConditionParser = Callable[[Fields, Collector], Condition]

_BUILTIN_PARSERS: dict[str, ConditionParser] = {
    "dependency": _dependency,
    "max_running": _max_running,
    "const": _const,
    "skip_duplicate": _skip_duplicate,
}


CONDITION_TYPES = tuple(_BUILTIN_PARSERS)


def condition_registry() -> Registry[ConditionParser]:
    """A registry of the built-in condition types, for plugins to be added to."""
    return Registry("condition", _BUILTIN_PARSERS)


class ConditionType(Protocol):
    """A condition type from a plugin (entry point group `apsis.conditions`).

    `parse` reads the type's keys from `fields` and returns the check; it raises
    `Invalid` for a bad value. Keys nobody read are reported as unknown.
    """

    def parse(self, fields: Fields) -> ConditionCheck: ...


def plugin_condition(name: str, plugin: ConditionType) -> ConditionParser:
    """The parser of a plugin condition type, for the condition registry."""

    def parse(f: Fields, c: Collector) -> Condition:
        check = plugin_parse(f"{name} condition plugin", f, plugin.parse)
        if not callable(getattr(check, "check", None)):
            got = type(check).__name__
            message = f"{name} condition plugin returned {got}, without check()"
            raise Invalid([FieldError(f.path, message)])
        return PluginCondition(name, check, {str(k): v for k, v in f.data.items()})

    return parse


def parse_condition(
    value: Any, path: str, registry: Registry[ConditionParser] | None = None
) -> Condition:
    """One condition from its YAML form; `registry`: the condition types (default:
    the built-in ones)."""
    types = _BUILTIN_PARSERS if registry is None else registry
    f, parser = typed(value, path, "a condition", types)
    c = Collector()
    condition = parser(f, c)
    c(f.done, None)
    c.check()
    return condition
