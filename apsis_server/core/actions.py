"""Actions: parsing and checking what a run's transitions trigger (firing is elsewhere).

Each action is a frozen value with the keys of spec/01-jobs.md; text fields may hold
templates, expanded when the action fires. `successors` in a job file is shorthand
for `schedule` actions on success.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from apsis_common.states import FINISHED, State
from apsis_server.core.conditions import finished_states
from apsis_server.core.fields import (
    Collector,
    FieldError,
    Fields,
    Invalid,
    duration,
    integer,
    items,
    positive_duration,
    positive_integer,
    string,
    string_map,
    strings,
    typed,
)
from apsis_server.core.registry import Registry, plugin_parse
from apsis_server.core.runs import Run

_ALL_FINISHED = tuple(s for s in State if s in FINISHED)


@dataclass(frozen=True)
class ScheduleAction:
    """Schedule a run of `job_id` now when this run reaches one of `states`.

    Params the target needs that `args` does not give are taken from this run.
    `states` None: fire once, when the run finishes in any state.
    """

    job_id: str
    args: Mapping[str, str] = field(default_factory=dict)
    states: tuple[State, ...] | None = None
    type: str = field(default="schedule", init=False)

    def template_fields(self) -> list[tuple[str, str]]:
        return [("job_id", self.job_id), *((f"args.{k}", v) for k, v in self.args.items())]


@dataclass(frozen=True)
class RetryAction:
    """Rerun the same job and args after a run ends in one of `states` (and, when
    `exit_codes` is given, with one of those exit codes), at most `max` times.

    The n-th retry (from 1) waits `delay * backoff ** (n - 1)`, at most `max_delay`.
    """

    max: int = 1
    delay: float = 0.0
    backoff: float = 1.0
    max_delay: float | None = None
    states: tuple[State, ...] = (State.FAILURE,)
    exit_codes: tuple[int, ...] | None = None
    type: str = field(default="retry", init=False)

    def template_fields(self) -> list[tuple[str, str]]:
        return []


@dataclass(frozen=True)
class WebhookAction:
    """POST the run's JSON to `url` when the run reaches one of `states`, with retries."""

    url: str
    states: tuple[State, ...] = _ALL_FINISHED
    type: str = field(default="webhook", init=False)

    def template_fields(self) -> list[tuple[str, str]]:
        return [("url", self.url)]


@dataclass(frozen=True)
class EmailAction:
    """Mail the run's summary to `to` when it reaches one of `states`."""

    to: tuple[str, ...]
    states: tuple[State, ...] = _ALL_FINISHED
    type: str = field(default="email", init=False)

    def template_fields(self) -> list[tuple[str, str]]:
        return [(f"to[{i}]", address) for i, address in enumerate(self.to)]


class ActionCall(Protocol):
    """What a plugin action type makes of its keys: a call made when a run finishes."""

    def fire(self, run: Run) -> Awaitable[str | None]:
        """Do it (an `async def`); the run is finished. What it returns, if anything,
        goes into the run's log; an exception is logged there as the failure."""


# A plugin action's time to finish, unless its `timeout` key says otherwise.
PLUGIN_ACTION_TIMEOUT = 60.0


@dataclass(frozen=True)
class PluginAction:
    """An action of a plugin type, fired when the run finishes in one of `states`,
    given `timeout` seconds; `form` is its keys as written (for the API)."""

    type: str
    action: ActionCall = field(compare=False)
    states: tuple[State, ...] = _ALL_FINISHED
    timeout: float = PLUGIN_ACTION_TIMEOUT
    form: Mapping[str, Any] = field(default_factory=dict)

    def template_fields(self) -> list[tuple[str, str]]:
        return []


Action = ScheduleAction | RetryAction | WebhookAction | EmailAction | PluginAction


def _if(value: Any, path: str) -> tuple[State, ...]:
    f = Fields(value, path, "a mapping like {states: [success]}")
    found = f.take("states", finished_states, _ALL_FINISHED)
    f.done()
    return found


def _schedule(f: Fields, c: Collector) -> Action:
    no_args: dict[str, str] = {}
    return ScheduleAction(
        job_id=c(lambda: f.need("job_id", string), ""),
        args=c(lambda: f.take("args", string_map, no_args), no_args),
        states=c(lambda: f.take("if", _if, None), None),
    )


def _exit_codes(value: Any, path: str) -> tuple[int, ...]:
    listed = value if isinstance(value, list) else [value]
    return tuple(integer(v, p) for v, p in items(listed, path))


def _on(value: Any, path: str) -> tuple[tuple[State, ...], tuple[int, ...] | None]:
    f = Fields(value, path, "a mapping like {states: [failure], exit_codes: [1]}")
    c = Collector()
    failure: tuple[State, ...] = (State.FAILURE,)
    found = c(lambda: f.take("states", finished_states, failure), failure)
    codes = c(lambda: f.take("exit_codes", _exit_codes, None), None)
    c(f.done, None)
    c.check()
    return found, codes


def _backoff(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 1:
        raise Invalid([FieldError(path, f"expected a multiplier of at least 1, got {value!r}")])
    return float(value)


def _retry(f: Fields, c: Collector) -> Action:
    on: tuple[tuple[State, ...], tuple[int, ...] | None] = ((State.FAILURE,), None)
    on = c(lambda: f.take("on", _on, on), on)
    return RetryAction(
        max=c(lambda: f.take("max", positive_integer, 1), 1),
        delay=c(lambda: f.take("delay", duration, 0.0), 0.0),
        backoff=c(lambda: f.take("backoff", _backoff, 1.0), 1.0),
        max_delay=c(lambda: f.take("max_delay", duration, None), None),
        states=on[0],
        exit_codes=on[1],
    )


def _url(value: Any, path: str) -> str:
    url = string(value, path)
    if "{" not in url and not url.startswith(("http://", "https://")):
        raise Invalid([FieldError(path, f"expected an http:// or https:// URL, got {url!r}")])
    return url


def _addresses(value: Any, path: str) -> tuple[str, ...]:
    found = strings(value, path)
    if not found:
        raise Invalid([FieldError(path, "expected at least one address")])
    for i, address in enumerate(found):
        if "{" not in address and "@" not in address:
            raise Invalid(
                [FieldError(f"{path}[{i}]", f"expected an email address, got {address!r}")]
            )
    return found


def _webhook(f: Fields, c: Collector) -> Action:
    return WebhookAction(
        url=c(lambda: f.need("url", _url), ""),
        states=c(lambda: f.take("states", finished_states, _ALL_FINISHED), ()),
    )


def _email(f: Fields, c: Collector) -> Action:
    return EmailAction(
        to=c(lambda: f.need("to", _addresses), ()),
        states=c(lambda: f.take("states", finished_states, _ALL_FINISHED), ()),
    )


ActionParser = Callable[[Fields, Collector], Action]

_BUILTIN_PARSERS: dict[str, ActionParser] = {
    "schedule": _schedule,
    "retry": _retry,
    "webhook": _webhook,
    "email": _email,
}


ACTION_TYPES = tuple(_BUILTIN_PARSERS)


def action_registry() -> Registry[ActionParser]:
    """A registry of the built-in action types, for plugins to be added to."""
    return Registry("action", _BUILTIN_PARSERS)


class ActionType(Protocol):
    """An action type from a plugin (entry point group `apsis.actions`).

    `parse` reads the type's own keys from `fields` and returns the call; it raises
    `Invalid` for a bad value. Apsis reads `states` (when to fire: default every
    finished state) and `timeout` (default 60s) itself, and reports keys nobody read
    as unknown.
    """

    def parse(self, fields: Fields) -> ActionCall: ...


def plugin_action(name: str, plugin: ActionType) -> ActionParser:
    """The parser of a plugin action type, for the action registry."""

    def parse(f: Fields, c: Collector) -> Action:
        form = {str(k): v for k, v in f.data.items()}
        states = c(lambda: f.take("states", finished_states, _ALL_FINISHED), _ALL_FINISHED)
        timeout = c(
            lambda: f.take("timeout", positive_duration, PLUGIN_ACTION_TIMEOUT),
            PLUGIN_ACTION_TIMEOUT,
        )
        try:
            call = plugin_parse(f"{name} action plugin", f, plugin.parse)
        except Invalid as exc:  # with the errors of `states` and `timeout`, if any
            raise Invalid([*c.errors, *exc.errors]) from None
        if not callable(getattr(call, "fire", None)):
            got = type(call).__name__
            raise Invalid(
                [FieldError(f.path, f"{name} action plugin returned {got}, without fire()")]
            )
        return PluginAction(name, call, states, timeout, form)

    return parse


def parse_action(value: Any, path: str, registry: Registry[ActionParser] | None = None) -> Action:
    """One action from its YAML form; `registry`: the action types (default: the
    built-in ones)."""
    types = _BUILTIN_PARSERS if registry is None else registry
    f, parser = typed(value, path, "an action", types)
    c = Collector()
    action = parser(f, c)
    c(f.done, None)
    c.check()
    return action


def parse_successor(value: Any, path: str) -> ScheduleAction:
    """One `successors` entry, `{job_id, args}` or a bare job id: a schedule on success."""
    if isinstance(value, str):
        return ScheduleAction(job_id=value, states=(State.SUCCESS,))
    f = Fields(value, path, "a successor (a job id or {job_id, args})")
    c = Collector()
    no_args: dict[str, str] = {}
    action = ScheduleAction(
        job_id=c(lambda: f.need("job_id", string), ""),
        args=c(lambda: f.take("args", string_map, no_args), no_args),
        states=(State.SUCCESS,),
    )
    c(f.done, None)
    c.check()
    return action
