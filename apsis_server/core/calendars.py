"""Dates, daytimes, time zones and calendars: typed wrappers over ora, and calendar files.

Dates are `datetime.date`, daytimes are float seconds since midnight, times are float
UTC epoch seconds. ora does the time zone and calendar work; nothing else in the
core touches ora directly, so ora's untyped API stays behind this module.

DST policy (documented in docs/jobs.md): a local time that falls in a spring-forward
gap resolves to the first valid instant after the gap (`shift`) or to nothing
(`skip`); a local time that occurs twice at fall-back resolves to its first
occurrence (`first`) or to both (`both`).
"""

from __future__ import annotations

import datetime
import enum
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import ora

from apsis_server.core.fields import FieldError, Fields, Invalid, items, string

_EPOCH_ORDINAL = datetime.date(1970, 1, 1).toordinal()
_DAY = 86400.0


class DstGap(enum.StrEnum):
    """What a local time inside a spring-forward gap becomes."""

    SHIFT = "shift"
    SKIP = "skip"


class DstRepeat(enum.StrEnum):
    """What a local time that occurs twice at fall-back becomes."""

    FIRST = "first"
    BOTH = "both"


def _ora_date(d: datetime.date) -> Any:
    # ora counts days from 0001-01-01 as 0; Python's ordinal counts it as 1.
    return ora.Date.from_datenum(d.toordinal() - 1)


def _py_date(d: Any) -> datetime.date:
    return datetime.date.fromordinal(int(d.datenum) + 1)


def midnight(d: datetime.date) -> float:
    """UTC epoch seconds of 00:00 on `d` as if it were UTC (a "local epoch")."""
    return (d.toordinal() - _EPOCH_ORDINAL) * _DAY


# --- parsing ----------------------------------------------------------------------

_DAYTIME = re.compile(r"^\s*(\d{1,2}):(\d{2})(?::(\d{2})(\.\d+)?)?\s*$")


def parse_daytime(value: Any, path: str) -> float:
    """Seconds since midnight from `HH:MM:SS`, `HH:MM` (or a `datetime.time`)."""
    if isinstance(value, datetime.time):
        return value.hour * 3600.0 + value.minute * 60 + value.second + value.microsecond / 1e6
    match = _DAYTIME.match(value) if isinstance(value, str) else None
    if match is not None:
        hour, minute, second = int(match[1]), int(match[2]), int(match[3] or 0)
        if hour < 24 and minute < 60 and second < 60:
            return hour * 3600.0 + minute * 60 + second + float(match[4] or 0)
    raise Invalid([FieldError(path, f"expected a daytime like 09:30 or 09:30:00, got {value!r}")])


def format_daytime(ssm: float) -> str:
    """`HH:MM:SS` (with fractional seconds only when there are some)."""
    whole = int(ssm)
    text = f"{whole // 3600:02d}:{whole // 60 % 60:02d}:{whole % 60:02d}"
    return text + (f"{ssm - whole:.6f}".rstrip("0")[1:] if ssm != whole else "")


def parse_date(value: Any, path: str) -> datetime.date:
    """A date from `YYYY-MM-DD` (YAML may already have made it a `datetime.date`)."""
    if isinstance(value, datetime.datetime):
        return value.date()
    if isinstance(value, datetime.date):
        return value
    if isinstance(value, str):
        try:
            return datetime.date.fromisoformat(value.strip())
        except ValueError:
            pass
    raise Invalid([FieldError(path, f"expected a date like 2027-01-31, got {value!r}")])


# --- time zones -------------------------------------------------------------------


@dataclass(frozen=True)
class Zone:
    """A time zone by name, with local ↔ UTC conversion under a DST policy."""

    name: str
    _tz: Any = field(compare=False, repr=False)

    def offset(self, t: float) -> int:
        """The UTC offset in seconds in effect at time `t`."""
        return int(self._tz.at(ora.UNIX_EPOCH + t).offset)

    def to_local(self, t: float) -> tuple[datetime.date, float]:
        """The local (date, seconds since midnight) of time `t`."""
        local = t + self.offset(t)
        days = int(local // _DAY)
        return datetime.date.fromordinal(_EPOCH_ORDINAL + days), local - days * _DAY

    def from_local(
        self,
        d: datetime.date,
        ssm: float,
        gap: DstGap = DstGap.SHIFT,
        repeat: DstRepeat = DstRepeat.FIRST,
    ) -> tuple[float, ...]:
        """The times, in order, that local `d` at `ssm` stands for under the DST policy."""
        local = midnight(d) + ssm
        date, daytime = _ora_date(d), ora.Daytime.from_ssm(ssm)
        try:
            first = int(self._tz.at_local(date, daytime, first=True).offset)
            second = int(self._tz.at_local(date, daytime, first=False).offset)
        except ValueError:
            # ora refuses local times inside a spring-forward gap.
            return (self._gap_end(local),) if gap is DstGap.SHIFT else ()
        if first == second or repeat is DstRepeat.FIRST:
            return (local - first,)
        return (local - first, local - second)

    def _gap_end(self, local: float) -> float:
        """The first instant whose local time is past `local`, which lies in a gap.

        Offsets are within [-12h, +14h], so the instant lies in a 28-hour window;
        transitions happen on whole seconds, so a binary search over integers is exact.
        """
        lo, hi = int(local) - 15 * 3600, int(local) + 13 * 3600
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if mid + self.offset(mid) > local:
                hi = mid
            else:
                lo = mid
        return float(hi)


def zone(value: Any, path: str) -> Zone:
    """A time zone from its IANA name."""
    name = string(value, path)
    try:
        return Zone(name, ora.TimeZone(name))
    except (ValueError, LookupError):
        raise Invalid([FieldError(path, f"unknown time zone {name!r}")]) from None


UTC = Zone("UTC", ora.UTC)


# --- calendars --------------------------------------------------------------------


@dataclass(frozen=True)
class Calendar:
    """A set of dates within a range; outside the range nothing is known."""

    name: str
    _cal: Any = field(compare=False, repr=False)

    def __str__(self) -> str:
        return self.name

    @property
    def ora_calendar(self) -> Any:
        """The ora calendar itself, for templates."""
        return self._cal

    def contains(self, d: datetime.date) -> bool:
        try:
            return bool(_ora_date(d) in self._cal)
        except ora.CalendarRangeError:
            return False

    def after(self, d: datetime.date) -> datetime.date | None:
        """The first calendar date on or after `d`; None past the calendar's range."""
        start = _py_date(self._cal.range[0])
        try:
            return _py_date(self._cal.after(_ora_date(max(d, start))))
        except (ora.CalendarRangeError, ValueError, OverflowError):
            return None

    def shift(self, d: datetime.date, n: int) -> datetime.date | None:
        """The calendar date `n` calendar dates from `d` (a calendar date); None out of range."""
        try:
            return _py_date(self._cal.shift(_ora_date(d), n))
        except (ora.CalendarRangeError, ValueError, OverflowError):
            return None


def builtin_calendar(name: str) -> Calendar | None:
    """`all`, `none`, or a weekday expression like `Mon-Fri` or `Mon,Wed,Fri`."""
    whole = (ora.Date.MIN, ora.Date.MAX)
    if name in ("all", "none"):
        return Calendar(name, ora.make_const_calendar(whole, name == "all"))
    try:
        weekdays = ora.parse_weekdays(name)
    except (ValueError, TypeError, LookupError):
        return None
    return Calendar(name, ora.make_weekday_calendar(whole, weekdays))


def resolve_calendar(name: str, named: Mapping[str, Calendar], path: str) -> Calendar:
    """A named calendar (from the calendar directory) or a built-in one."""
    found = named.get(name) or builtin_calendar(name)
    if found is None:
        known = ", ".join(sorted(named)) or "none loaded"
        raise Invalid(
            [
                FieldError(
                    path,
                    f"unknown calendar {name!r} (expected all, a weekday list like Mon-Fri, "
                    f"or a calendar file name: {known})",
                )
            ]
        )
    return found


def _make(name: str, start: datetime.date, stop: datetime.date, dates: set[datetime.date]) -> Any:
    return ora.Calendar((_ora_date(start), _ora_date(stop)), [_ora_date(d) for d in sorted(dates)])


def parse_cal_text(name: str, text: str) -> Calendar:
    """A calendar from ora's `.cal` format: `START date`, `STOP date`, then one date a line.

    The listed dates are the calendar's dates; text after a date is a comment. Without
    START/STOP the range runs from the first date to the day after the last.
    """
    bounds: dict[str, datetime.date] = {}
    dates: set[datetime.date] = set()
    for number, line in enumerate(text.splitlines(), 1):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        path = f"line {number}"
        if words[0].upper() in ("START", "STOP") and len(words) >= 2:
            bounds[words[0].upper()] = parse_date(words[1], path)
        else:
            dates.add(parse_date(words[0], path))
    return _bounded(name, bounds.get("START"), bounds.get("STOP"), dates, set(), None)


def parse_calendar_data(name: str, data: Any) -> Calendar:
    """A holiday calendar from its YAML form.

    `weekdays` (default `Mon-Fri`) minus `holidays` (a list of dates), valid from
    `start` (default: January 1 of the first holiday's year) up to but not including
    `stop` (default: January 1 after the last holiday's year).
    """
    f = Fields(data, "", "a calendar mapping (weekdays, holidays, start, stop)")
    weekday_text = f.take("weekdays", string, "Mon-Fri")
    f.take("description", string, "")
    holidays = f.take("holidays", _dates, set())
    start = f.take("start", parse_date, None)
    stop = f.take("stop", parse_date, None)
    f.done()
    weekdays = builtin_calendar(weekday_text)
    if weekdays is None or weekday_text in ("all", "none"):
        raise Invalid(
            [FieldError("weekdays", f"expected weekdays like Mon-Fri, got {weekday_text!r}")]
        )
    return _bounded(name, start, stop, set(), holidays, weekday_text)


def _dates(value: Any, path: str) -> set[datetime.date]:
    if not isinstance(value, list):
        raise Invalid([FieldError(path, "expected a list of dates")])
    out = set()
    for item, at in items(value, path):
        # Allow `2027-12-25 Christmas` as a date with a comment.
        text = item.split()[0] if isinstance(item, str) and item.strip() else item
        out.add(parse_date(text, at))
    return out


def _bounded(
    name: str,
    start: datetime.date | None,
    stop: datetime.date | None,
    dates: set[datetime.date],
    holidays: set[datetime.date],
    weekdays: str | None,
) -> Calendar:
    listed = dates | holidays
    if start is None:
        first = min(listed, default=None)
        start = first if weekdays is None or first is None else datetime.date(first.year, 1, 1)
    if stop is None:
        last = max(listed, default=None)
        if last is not None:
            stop = (
                last + datetime.timedelta(1)
                if weekdays is None
                else datetime.date(last.year + 1, 1, 1)
            )
    if start is None or stop is None:
        raise Invalid([FieldError("", "calendar has no dates and no START/STOP range")])
    if stop <= start:
        raise Invalid([FieldError("stop", f"stop {stop} is not after start {start}")])
    outside = sorted(d for d in listed if not start <= d < stop)
    if outside:
        raise Invalid([FieldError("", f"date {outside[0]} is outside the range {start} to {stop}")])
    if weekdays is None:
        return Calendar(name, _make(name, start, stop, dates))
    weekday_cal = ora.make_weekday_calendar(
        (_ora_date(start), _ora_date(stop)), ora.parse_weekdays(weekdays)
    )
    return Calendar(name, weekday_cal & ~_make(name, start, stop, holidays))


def iter_dates(cal: Calendar, first: datetime.date) -> Iterator[datetime.date]:
    """Calendar dates from `first` on, ending where the calendar's range ends."""
    d = cal.after(first)
    while d is not None:
        yield d
        d = cal.after(d + datetime.timedelta(1))
