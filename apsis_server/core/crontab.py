"""Cron expressions (parsing the five or six fields, matching dates) and the crontab schedule.

Standard cron semantics (Vixie cron): `*`, numbers, ranges `a-b`, steps `*/n` and
`a-b/n`, lists `a,b`, month and weekday names, weekday 0 or 7 for Sunday. When both
the day-of-month and the weekday fields are restricted, a date matches if *either*
matches; a field counts as unrestricted when it starts with `*` (so `*/2` in the
day field leaves the weekday field deciding, as in Vixie cron). A sixth field, at
the end, gives the seconds (default 0).
"""

from __future__ import annotations

import bisect
import datetime
import functools
from collections.abc import Iterator
from dataclasses import dataclass

from apsis_common.times import format_time
from apsis_server.core.calendars import UTC, DstGap, DstRepeat, Zone, format_daytime, midnight
from apsis_server.core.fields import FieldError, Invalid
from apsis_server.core.schedule_types import DAY, ScheduleBase, Slot

_MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
_WEEKDAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]

# name, lowest, highest, names (numbered from `lowest`)
_FIELDS: dict[str, tuple[int, int, list[str]]] = {
    "minute": (0, 59, []),
    "hour": (0, 23, []),
    "day": (1, 31, []),
    "month": (1, 12, _MONTHS),
    "weekday": (0, 7, _WEEKDAYS),
    "second": (0, 59, []),
}
FIELD_NAMES = ("minute", "hour", "day", "month", "weekday", "second")

_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}


@dataclass(frozen=True)
class CronExpr:
    """The sets of values each field allows."""

    seconds: tuple[int, ...]
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday … 6 = Saturday
    day_restricted: bool
    weekday_restricted: bool

    def matches(self, d: datetime.date) -> bool:
        """Whether cron would run on date `d` (the day/weekday OR rule included)."""
        if d.month not in self.months:
            return False
        day_ok = d.day in self.days
        weekday_ok = d.isoweekday() % 7 in self.weekdays
        if self.day_restricted and self.weekday_restricted:
            return day_ok or weekday_ok
        return day_ok and weekday_ok

    @functools.cached_property
    def daytime_list(self) -> tuple[float, ...]:
        """Every matching time of day, as seconds since midnight, in order."""
        return tuple(
            hour * 3600.0 + minute * 60 + second
            for hour in self.hours
            for minute in self.minutes
            for second in self.seconds
        )

    def dates(self, first: datetime.date, limit_days: int = 366 * 8) -> Iterator[datetime.date]:
        """Matching dates from `first`; ends after `limit_days` without a match."""
        d, idle = first, 0
        while idle < limit_days:
            if self.matches(d):
                idle = 0
                yield d
            else:
                idle += 1
            d += datetime.timedelta(1)


def _value(text: str, name: str, path: str) -> int:
    low, high, names = _FIELDS[name]
    lowered = text.lower()
    if lowered in names:
        return names.index(lowered) + low
    if not text.isdigit():
        raise Invalid([FieldError(path, f"bad {name} value {text!r} in cron field")])
    number = int(text)
    if not low <= number <= high:
        raise Invalid([FieldError(path, f"{name} {number} out of range {low}-{high}")])
    return number


def _part(part: str, name: str, path: str) -> set[int]:
    low, high, _ = _FIELDS[name]
    body, _, step_text = part.partition("/")
    step = 1
    if step_text:
        if not step_text.isdigit() or int(step_text) == 0:
            raise Invalid([FieldError(path, f"bad step {step_text!r} in cron {name} field")])
        step = int(step_text)
    if body == "*":
        first, last = low, high
    elif "-" in body:
        a, _, b = body.partition("-")
        first, last = _value(a, name, path), _value(b, name, path)
        if last < first:
            raise Invalid([FieldError(path, f"empty range {body!r} in cron {name} field")])
    else:
        first = _value(body, name, path)
        last = high if step_text else first
    return set(range(first, last + 1, step))


def parse_field(text: str, name: str, path: str) -> frozenset[int]:
    """The values one cron field allows."""
    if not text:
        raise Invalid([FieldError(path, f"empty cron {name} field")])
    values: set[int] = set()
    for part in text.split(","):
        values |= _part(part.strip(), name, path)
    if name == "weekday" and 7 in values:
        values = (values - {7}) | {0}
    return frozenset(values)


def parse_cron(fields: dict[str, str], path: str) -> CronExpr:
    """A cron expression from its fields by name (missing ones are `*`, seconds `0`)."""
    got = {name: fields.get(name, "0" if name == "second" else "*") for name in FIELD_NAMES}
    sets = {name: parse_field(text, name, path) for name, text in got.items()}
    expr = CronExpr(
        seconds=tuple(sorted(sets["second"])),
        minutes=tuple(sorted(sets["minute"])),
        hours=tuple(sorted(sets["hour"])),
        days=sets["day"],
        months=sets["month"],
        weekdays=sets["weekday"],
        day_restricted=not got["day"].startswith("*"),
        weekday_restricted=not got["weekday"].startswith("*"),
    )
    if next(expr.dates(datetime.date(2000, 1, 1), 366 * 5), None) is None:
        raise Invalid([FieldError(path, "cron expression never matches a date")])
    return expr


def split_expr(expr: str, path: str) -> dict[str, str]:
    """The fields of `"*/5 9-17 * * 1-5"` (five fields, or six with seconds last)."""
    text = _MACROS.get(expr.strip().lower(), expr)
    parts = text.split()
    if len(parts) not in (5, 6):
        raise Invalid(
            [FieldError(path, f"expected 5 cron fields (or 6 with seconds), got {len(parts)}")]
        )
    return dict(zip(FIELD_NAMES, parts, strict=False))


@dataclass(frozen=True)
class CrontabSchedule(ScheduleBase):
    """Standard cron semantics in local time of `tz` (see `crontab.py`)."""

    expr: CronExpr
    source: str
    tz: Zone = UTC
    dst_gap: DstGap = DstGap.SHIFT
    dst_repeat: DstRepeat = DstRepeat.FIRST

    def slots(self, start: float) -> Iterator[Slot]:
        daytimes = self.expr.daytime_list
        local_date, _ = self.tz.to_local(start)
        # Daytimes more than a few hours before `start` in local terms are before it
        # in any zone (DST moves clocks by at most two hours), so skip them unconverted.
        naive_floor = start + self.tz.offset(start) - 3 * 3600
        for day in self.expr.dates(local_date - datetime.timedelta(1)):
            day_start = self.tz.from_local(day, 0.0)[0]
            if self.tz.from_local(day + datetime.timedelta(1), 0.0)[0] - day_start == DAY:
                # No DST change this day: each time is the day's start plus the daytime,
                # so find the first one due directly and stay lazy.
                for i in range(bisect.bisect_left(daytimes, start - day_start), len(daytimes)):
                    yield self._slot(day_start + daytimes[i], day, daytimes[i])
                continue
            skip = bisect.bisect_left(daytimes, naive_floor - midnight(day))
            found = sorted(
                (t, ssm)
                for ssm in daytimes[skip:]
                for t in self.tz.from_local(day, ssm, self.dst_gap, self.dst_repeat)
            )
            for t, ssm in found:
                yield self._slot(t, day, ssm)

    def _slot(self, t: float, day: datetime.date, ssm: float) -> Slot:
        auto = {"time": format_time(t) or "", "date": day.isoformat()}
        return Slot(t, day, {**auto, "daytime": format_daytime(ssm), "tz": self.tz.name})

    def describe(self) -> str:
        return f"cron {self.source} {self.tz.name}"
