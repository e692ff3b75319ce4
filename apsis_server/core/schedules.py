"""Schedules: parsing the `schedule` entries of a job file into schedule values.

The schedule types themselves (what times they yield) are in `schedule_types.py`;
this module reads and checks their YAML form and re-exports the public names.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol, cast

from apsis_common.errors import BadInput
from apsis_common.times import parse_time
from apsis_server.core.calendars import (
    UTC,
    Calendar,
    DstGap,
    DstRepeat,
    parse_date,
    parse_daytime,
    resolve_calendar,
    zone,
)
from apsis_server.core.crontab import FIELD_NAMES, CrontabSchedule, parse_cron, split_expr
from apsis_server.core.fields import (
    Collector,
    FieldError,
    Fields,
    Invalid,
    boolean,
    choice,
    duration,
    integer,
    items,
    positive_duration,
    signed_duration,
    string,
    string_map,
)
from apsis_server.core.registry import Registry, plugin_parse
from apsis_server.core.schedule_types import (
    ALL_DAYS,
    AUTO_ARGS,
    DailyIntervalSchedule,
    DailySchedule,
    DaytimeSpec,
    DaytimeStop,
    Due,
    DurationStop,
    ExplicitSchedule,
    IntervalSchedule,
    PluginSchedule,
    Schedule,
    ScheduleBase,
    ScheduleRule,
    StopSchedule,
    form_key,
)
from apsis_server.core.templates import Templates, check_template

__all__ = [
    "CrontabSchedule",
    "DailyIntervalSchedule",
    "DailySchedule",
    "Due",
    "ExplicitSchedule",
    "IntervalSchedule",
    "PluginSchedule",
    "Schedule",
    "ScheduleContext",
    "ScheduleRule",
    "ScheduleType",
    "StopSchedule",
    "parse_schedule",
    "supplied_args",
]

SCHEDULE_TYPES = ("interval", "daily", "daily-interval", "explicit", "crontab")


# Reads a schedule type's own keys; the common ones are read already.
ScheduleParser = Callable[["_Reader", dict[str, Any]], ScheduleBase]


@dataclass(frozen=True)
class ScheduleContext:
    """What parsing a schedule needs from its job and the server."""

    job_id: str = ""
    params: tuple[str, ...] | None = None  # None: do not check arg names
    templates: Templates | None = None
    calendars: Mapping[str, Calendar] = field(default_factory=dict)
    # The schedule types by name (None: the built-in ones).
    types: Registry[ScheduleParser] | None = field(default=None, compare=False)


def _time(value: Any, path: str) -> float:
    try:
        return parse_time(value)
    except BadInput as exc:
        raise Invalid([FieldError(path, str(exc))]) from None


def _times(value: Any, path: str) -> tuple[float, ...]:
    listed = value if isinstance(value, list) else [value]
    if not listed:
        raise Invalid([FieldError(path, "expected at least one time")])
    c = Collector()
    times = {c(partial(_time, t, f"{path}[{i}]"), 0.0) for i, t in enumerate(listed)}
    c.check()
    return tuple(sorted(times))


def _daytimes(value: Any, path: str) -> tuple[float, ...]:
    if not isinstance(value, list):
        return (parse_daytime(value, path),)
    listed = value
    if not listed:
        raise Invalid([FieldError(path, "expected at least one daytime")])
    c = Collector()
    out = {c(partial(parse_daytime, v, p), 0.0) for v, p in items(listed, path)}
    c.check()
    return tuple(sorted(out))


def _daytime_spec(value: Any, path: str) -> DaytimeSpec:
    if not isinstance(value, Mapping):
        return DaytimeSpec(parse_daytime(value, path))
    f = Fields(value, path)
    spec = DaytimeSpec(
        f.need("daytime", parse_daytime),
        f.take("cal_shift", integer, 0),
        f.take("date_shift", integer, 0),
    )
    f.done()
    return spec


class _Reader:
    """Reads the keys of one schedule mapping, collecting every error."""

    def __init__(self, f: Fields, ctx: ScheduleContext) -> None:
        self.f, self.ctx, self.c = f, ctx, Collector()

    def need(self, key: str, convert: Callable[[Any, str], Any], default: Any) -> Any:
        return self.c(lambda: self.f.need(key, convert), default)

    def take(self, key: str, convert: Callable[[Any, str], Any], default: Any) -> Any:
        return self.c(lambda: self.f.take(key, convert, default), default)

    def common(self, form: Any) -> dict[str, Any]:
        start_date = self.take("start_date", parse_date, None)
        end_date = self.take("end_date", parse_date, None)
        if start_date and end_date and end_date < start_date:
            self.c.errors.append(FieldError(self.f.at("end_date"), "end_date is before start_date"))
        return {
            "key": form_key(form),
            "enabled": self.take("enabled", boolean, True),
            "args": self._args(),
            "start_date": start_date,
            "end_date": end_date,
            "jitter": self.take("jitter", duration, 0.0),
            "job_id": self.ctx.job_id,
            "templates": self.ctx.templates,
        }

    def _args(self) -> dict[str, str]:
        no_args: dict[str, str] = {}
        args: dict[str, str] = self.take("args", string_map, no_args)
        known = {*AUTO_ARGS, "job_id"}
        for name, text in args.items():
            path = self.f.at("args") + f".{name}"
            if self.ctx.params is not None and name not in self.ctx.params:
                self.c.errors.append(FieldError(path, f"{name!r} is not a param of the job"))
            elif self.ctx.templates is not None:
                error = check_template(self.ctx.templates, text, known, path)
                if error is not None:
                    self.c.errors.append(error)
        return args

    def local(self, dst: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {"tz": self.take("tz", zone, UTC)}
        if dst:
            out["dst_gap"] = DstGap(self.take("dst_gap", choice("shift", "skip"), "shift"))
            out["dst_repeat"] = DstRepeat(self.take("dst_repeat", choice("first", "both"), "first"))
        return out

    def calendar(self) -> Calendar:
        def convert(value: Any, path: str) -> Calendar:
            return resolve_calendar(string(value, path), self.ctx.calendars, path)

        found: Calendar = self.take("calendar", convert, ALL_DAYS)
        return found


def _interval(r: _Reader, common: dict[str, Any]) -> ScheduleBase:
    interval = r.need("interval", positive_duration, 1.0)
    return IntervalSchedule(
        interval=interval, phase=r.take("phase", duration, 0.0) % interval, **common
    )


def _daily(r: _Reader, common: dict[str, Any]) -> ScheduleBase:
    return DailySchedule(
        daytimes=r.need("daytime", _daytimes, (0.0,)),
        calendar=r.calendar(),
        cal_shift=r.take("cal_shift", integer, 0),
        date_shift=r.take("date_shift", integer, 0),
        time_shift=r.take("time_shift", signed_duration, 0.0),
        **r.local(),
        **common,
    )


def _daily_interval(r: _Reader, common: dict[str, Any]) -> ScheduleBase:
    start = r.need("start", _daytime_spec, DaytimeSpec(0.0))
    stop = r.need("stop", _daytime_spec, DaytimeSpec(86400.0))
    unshifted = (start.cal_shift, start.date_shift, stop.cal_shift, stop.date_shift) == (0,) * 4
    if unshifted and stop.daytime <= start.daytime:
        r.c.errors.append(
            FieldError(r.f.at("stop"), "stop is not after start (give stop a date_shift: 1)")
        )
    return DailyIntervalSchedule(
        start=start,
        stop=stop,
        interval=r.need("interval", positive_duration, 3600.0),
        calendar=r.calendar(),
        time_shift=r.take("time_shift", signed_duration, 0.0),
        **r.local(dst=False),
        **common,
    )


def _explicit(r: _Reader, common: dict[str, Any]) -> ScheduleBase:
    return ExplicitSchedule(times=r.need("times", _times, ()), **common)


def _crontab(r: _Reader, common: dict[str, Any]) -> ScheduleBase:
    r.f.allow("expr", *FIELD_NAMES)  # both forms' keys, for the unknown key error
    given = [name for name in FIELD_NAMES if r.f.has(name)]
    if r.f.has("expr") == bool(given):
        raise Invalid(
            [FieldError(r.f.at("expr"), "give either expr or the fields " + ", ".join(FIELD_NAMES))]
        )
    if r.f.has("expr"):
        source = r.need("expr", string, "* * * * *")
        no_fields: dict[str, str] = {}
        fields = r.c(lambda: split_expr(source, r.f.at("expr")), no_fields)
        path = r.f.at("expr")
    else:
        fields = {name: r.take(name, string, "*") for name in given}
        source = " ".join(fields.get(n, "0" if n == "second" else "*") for n in FIELD_NAMES)
        path = r.f.path
    expr = r.c(lambda: parse_cron(fields, path), None)
    if expr is None:
        # A stand-in, so the other keys are still read; the error is already in r.c,
        # which `_base_schedule` raises (raising it here too would report it twice).
        expr = parse_cron({}, path)
    return CrontabSchedule(expr=expr, source=source, **r.local(), **common)


_BUILTIN_PARSERS: dict[str, ScheduleParser] = {
    "interval": _interval,
    "daily": _daily,
    "daily-interval": _daily_interval,
    "explicit": _explicit,
    "crontab": _crontab,
}


def schedule_registry() -> Registry[ScheduleParser]:
    """A registry of the built-in schedule types, for plugins to be added to."""
    return Registry("schedule", _BUILTIN_PARSERS)


class ScheduleType(Protocol):
    """A schedule type from a plugin (entry point group `apsis.schedules`).

    `parse` reads the type's own keys from `fields` and returns the rule giving its
    times; it raises `Invalid` for a bad value. Apsis reads the keys every schedule
    has (`enabled`, `args`, `start_date`, `end_date`, `jitter`) itself, and reports
    keys nobody read as unknown.
    """

    def parse(self, fields: Fields) -> ScheduleRule: ...


def _checked_rule(rule: object, name: str, path: str) -> ScheduleRule:
    if not (callable(getattr(rule, "times", None)) and callable(getattr(rule, "describe", None))):
        got = type(rule).__name__
        message = f"{name} schedule plugin returned {got}, without times() and describe()"
        raise Invalid([FieldError(path, message)])
    return cast(ScheduleRule, rule)


def plugin_schedule(name: str, plugin: ScheduleType) -> ScheduleParser:
    """The parser of a plugin schedule type, for the schedule registry."""

    def parse(r: _Reader, common: dict[str, Any]) -> ScheduleBase:
        what = f"{name} schedule plugin"
        rule = _checked_rule(plugin_parse(what, r.f, plugin.parse), name, r.f.path)
        return PluginSchedule(type_name=name, rule=rule, **common)

    return parse


def _base_schedule(value: Any, path: str, ctx: ScheduleContext) -> ScheduleBase:
    f = Fields(value, path, "a schedule (a mapping with a type)")
    kind = f.need("type", string)
    types = ctx.types if ctx.types is not None else _BUILTIN_PARSERS
    parser = types.get(kind)
    if parser is None:
        expected = ", ".join(types)
        raise Invalid(
            [FieldError(f.at("type"), f"unknown schedule type {kind!r} (expected {expected})")]
        )
    r = _Reader(f, ctx)
    common = r.common(value)
    schedule = r.c(lambda: parser(r, common), None)
    r.c(f.done, None)
    r.c.check()
    assert schedule is not None
    return schedule


def _stop(value: Any, path: str) -> DurationStop | DaytimeStop:
    f = Fields(value, path, "a stop schedule (a mapping with a type)")
    kind = f.need("type", choice("duration", "daytime"))
    stop: DurationStop | DaytimeStop
    if kind == "duration":
        stop = DurationStop(f.need("duration", positive_duration))
    else:
        stop = DaytimeStop(f.need("daytime", parse_daytime), f.take("tz", zone, UTC))
    f.done()
    return stop


def parse_schedule(value: Any, path: str, ctx: ScheduleContext | None = None) -> Schedule:
    """One schedule from its YAML form: a typed mapping, or `{start: ..., stop: ...}`."""
    ctx = ctx or ScheduleContext()
    if isinstance(value, Mapping) and "type" not in value and "start" in value:
        f = Fields(value, path)
        c = Collector()
        start = c(lambda: f.need("start", lambda v, p: _base_schedule(v, p, ctx)), None)
        stop = c(lambda: f.need("stop", _stop), None)
        c(f.done, None)
        c.check()
        assert start is not None and stop is not None
        return StopSchedule(start=start, stop=stop, key=form_key(value))
    return _base_schedule(value, path, ctx)


def supplied_args(schedule: Schedule) -> frozenset[str]:
    """The arg names a schedule gives values for: its own args and its automatic ones."""
    if isinstance(schedule, ScheduleBase | StopSchedule):
        return frozenset(schedule.args) | schedule.auto_names
    return frozenset()
