"""The schedule types: when a job's runs are due, as plain iterators over times.

`schedules.py` parses them from job files.

Theory of operation
-------------------
Each schedule type yields *slots*: nominal times in nondecreasing order, each with
its nominal date and the automatic args it can supply (`time`, `date`, `daytime`,
`calendar`, `tz`). `ScheduleBase.due` turns slots into `Due`s the same way for every
type: it drops slots outside the validity window (`start_date`/`end_date`, compared
with the nominal date), delays each by its jitter (a hash of the job id and the
nominal time, so a restart never moves a run), restores the order jitter may have
disturbed, never yields a time twice or out of order, and fills in the args: the
automatic ones the job has params for, then the schedule's own, templated, args.

Nothing here reads the clock; `start` is always passed in.
"""

from __future__ import annotations

import bisect
import datetime
import hashlib
import heapq
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from apsis_common.times import format_time
from apsis_server.core.calendars import (
    UTC,
    Calendar,
    DstGap,
    DstRepeat,
    Zone,
    builtin_calendar,
    format_daytime,
    iter_dates,
    midnight,
)
from apsis_server.core.templates import TemplateError, Templates

DAY = 86400.0
AUTO_ARGS = ("time", "date", "daytime", "calendar", "tz")


def span(seconds: float) -> str:
    """A duration as people write it: `45s`, `10m`, `1h 30m`, `1d`, `0.5s`."""
    whole = int(seconds)
    if whole != seconds or whole < 60:
        return f"{seconds:g}s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if whole >= size:
            parts.append(f"{whole // size}{unit}")
            whole %= size
    return " ".join(parts)


@dataclass(frozen=True)
class Due:
    """One time a schedule is due, with the args it supplies.

    `error` is set when a templated schedule arg failed to expand; a run made from
    this `Due` should go straight to `error` with that message.
    """

    time: float
    args: Mapping[str, str] = field(default_factory=dict)
    stop_time: float | None = None
    error: str | None = None


class Schedule(Protocol):
    """A schedule yields due times in increasing order, never the same twice."""

    @property
    def key(self) -> str:
        """Identifies the schedule within its job across reloads (a hash of its form)."""

    @property
    def enabled(self) -> bool: ...

    def due(self, start: float, params: tuple[str, ...]) -> Iterator[Due]:
        """Due times at or after `start`, in increasing order."""

    def text(self) -> str:
        """A short human description."""


def _canonical(form: Any) -> Any:
    # Keys as text, so a mapping with keys of mixed types still sorts.
    if isinstance(form, dict):
        return {str(k): _canonical(v) for k, v in form.items()}
    if isinstance(form, list | tuple):
        return [_canonical(v) for v in form]
    return form


def form_key(form: Any) -> str:
    """A stable hash of a schedule's YAML form."""
    text = json.dumps(_canonical(form), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def jitter_delay(job_id: str, nominal: float, jitter: float) -> float:
    """A delay in [0, jitter), the same for the same job and nominal time."""
    digest = hashlib.sha256(f"{job_id}\0{nominal:.6f}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 * jitter


@dataclass(frozen=True)
class Slot:
    """A nominal schedule time, before the window, jitter and args are applied."""

    time: float
    date: datetime.date
    auto: Mapping[str, str]


def _utc_slot(t: float) -> Slot:
    d, ssm = UTC.to_local(t)
    auto = {"time": format_time(t) or "", "date": d.isoformat()}
    return Slot(t, d, {**auto, "daytime": format_daytime(ssm), "tz": "UTC"})


def _all_days() -> Calendar:
    found = builtin_calendar("all")
    assert found is not None
    return found


ALL_DAYS = _all_days()


def _days(calendar: Calendar) -> str:
    """The days of a schedule's text: `every day`, or its calendar's name (`Mon-Fri`)."""
    return "every day" if calendar.name == ALL_DAYS.name else calendar.name


@dataclass(frozen=True, kw_only=True)
class ScheduleBase:
    """What every schedule type shares; subclasses provide `slots` and `describe`."""

    key: str = ""
    enabled: bool = True
    args: Mapping[str, str] = field(default_factory=dict)
    start_date: datetime.date | None = None
    end_date: datetime.date | None = None
    jitter: float = 0.0
    # The owning job's id: it seeds the jitter and is in scope for arg templates.
    job_id: str = ""
    templates: Templates | None = field(default=None, compare=False, repr=False)

    @property
    def auto_names(self) -> frozenset[str]:
        return frozenset(("time", "date", "daytime", "tz"))

    def slots(self, start: float) -> Iterator[Slot]:
        """Nominal slots, nondecreasing, covering every time at or after `start`."""
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def earliest(self, d: datetime.date) -> float:
        """A time no later than any slot dated `d` or later.

        Slot dates are local dates, and no zone is a day or more off UTC.
        """
        return midnight(d) - DAY

    def text(self) -> str:
        out = self.describe()
        if self.args:
            out = "(" + ", ".join(f"{k}={v}" for k, v in self.args.items()) + ") " + out
        if self.start_date is not None:
            out += f" from {self.start_date}"
        if self.end_date is not None:
            out += f" until {self.end_date}"
        if self.jitter:
            out += f" jitter {span(self.jitter)}"
        # Whether it is enabled is the schedule's `enabled`, not part of what it says.
        return out

    def due(self, start: float, params: tuple[str, ...]) -> Iterator[Due]:
        search = start - self.jitter
        if self.start_date is not None:
            search = max(search, self.earliest(self.start_date))
        timed = self._windowed(search)
        if self.jitter > 0:
            timed = self._jittered(timed)
        last = -math.inf
        for t, slot in timed:
            if t >= start and t > last:
                last = t
                yield self._make_due(t, slot, params)

    def _windowed(self, search: float) -> Iterator[tuple[float, Slot]]:
        for slot in self.slots(search):
            if self.end_date is not None and slot.date > self.end_date:
                return
            if self.start_date is None or slot.date >= self.start_date:
                yield slot.time, slot

    def _jittered(self, timed: Iterator[tuple[float, Slot]]) -> Iterator[tuple[float, Slot]]:
        # A slot's jittered time is never before its nominal time, so anything
        # buffered at or before the next nominal time is safe to release.
        heap: list[tuple[float, int, Slot]] = []
        for seq, (t, slot) in enumerate(timed):
            while heap and heap[0][0] <= t:
                late, _, held = heapq.heappop(heap)
                yield late, held
            heapq.heappush(heap, (t + jitter_delay(self.job_id, t, self.jitter), seq, slot))
        while heap:
            late, _, held = heapq.heappop(heap)
            yield late, held

    def _make_due(self, t: float, slot: Slot, params: tuple[str, ...]) -> Due:
        args = {k: v for k, v in slot.auto.items() if k in params}
        error = None
        for name, text in self.args.items():
            if self.templates is None or "{" not in text:
                args[name] = text
                continue
            try:
                args[name] = self.templates.expand(text, {**slot.auto, "job_id": self.job_id})
            except TemplateError as exc:
                args[name] = text
                error = f"schedule arg {name}: {exc}"
        return Due(t, args, error=error)


@dataclass(frozen=True)
class IntervalSchedule(ScheduleBase):
    """Times t with (t - phase) % interval == 0, in UTC epoch seconds."""

    interval: float
    phase: float = 0.0

    def slots(self, start: float) -> Iterator[Slot]:
        n = math.ceil((start - self.phase) / self.interval)
        while True:
            yield _utc_slot(self.phase + n * self.interval)
            n += 1

    def earliest(self, d: datetime.date) -> float:
        return midnight(d)  # slot dates are UTC dates

    def describe(self) -> str:
        return f"every {span(self.interval)}" + (f" phase {span(self.phase)}" if self.phase else "")


@dataclass(frozen=True)
class ExplicitSchedule(ScheduleBase):
    """Exactly the listed times (sorted, without duplicates)."""

    times: tuple[float, ...]

    def slots(self, start: float) -> Iterator[Slot]:
        for t in self.times[bisect.bisect_left(self.times, start) :]:
            yield _utc_slot(t)

    def describe(self) -> str:
        shown = ", ".join(_utc_text(t) for t in self.times[:3])
        return "at " + shown + (" …" if len(self.times) > 3 else "")


def _utc_text(t: float) -> str:
    """`2027-01-01 00:00:00 UTC`: to the second, as people read it."""
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _shift_text(seconds: float) -> str:
    """` time shift -2m`: a schedule's `time_shift`, or nothing without one."""
    if not seconds:
        return ""
    return f" time shift {'-' if seconds < 0 else '+'}{span(abs(seconds))}"


class _LocalMixin:
    """Helpers for schedules that work in local dates of a time zone and calendar.

    `time_shift` (seconds, may be negative) moves every time a schedule yields,
    after the calendar and date shifts; the automatic args (`time`, `date`,
    `daytime`) stay those of the unshifted time, as in the earlier scheduler.
    """

    tz: Zone
    calendar: Calendar
    time_shift: float

    def _shifted(
        self, nominal: datetime.date, cal_shift: int, date_shift: int
    ) -> datetime.date | None:
        shifted = self.calendar.shift(nominal, cal_shift) if cal_shift else nominal
        return None if shifted is None else shifted + datetime.timedelta(date_shift)

    def _first_nominal(self, start: float, cal_shift: int, date_shift: int) -> datetime.date:
        """A calendar date no later than the first whose shifted date holds `start`."""
        local_date, _ = self.tz.to_local(start)
        first = self.calendar.after(local_date - datetime.timedelta(date_shift))
        if first is None:
            return datetime.date.max
        # One calendar date earlier, since DST can put a late time past midnight.
        return self.calendar.shift(first, -cal_shift - 1) or datetime.date.min

    def _earliest_shifted(self, d: datetime.date, cal_shift: int, date_shift: int) -> float:
        first = self.calendar.after(d)
        shifted = None if first is None else self._shifted(first, cal_shift, date_shift)
        return math.inf if shifted is None else midnight(shifted) - 2 * DAY

    def _local_auto(self, t: float, nominal: datetime.date, ssm: float) -> dict[str, str]:
        return {
            "time": format_time(t) or "",
            "date": nominal.isoformat(),
            "daytime": format_daytime(ssm),
            "calendar": self.calendar.name,
            "tz": self.tz.name,
        }


@dataclass(frozen=True)
class DailySchedule(_LocalMixin, ScheduleBase):
    """Each calendar date at each daytime in `tz`, shifted by `cal_shift` calendar dates
    and then `date_shift` days; the `date` arg keeps the nominal (unshifted) date."""

    daytimes: tuple[float, ...]
    tz: Zone = UTC
    calendar: Calendar = ALL_DAYS
    cal_shift: int = 0
    date_shift: int = 0
    dst_gap: DstGap = DstGap.SHIFT
    dst_repeat: DstRepeat = DstRepeat.FIRST
    time_shift: float = 0.0

    @property
    def auto_names(self) -> frozenset[str]:
        return frozenset(AUTO_ARGS)

    def slots(self, start: float) -> Iterator[Slot]:
        first = self._first_nominal(start - self.time_shift, self.cal_shift, self.date_shift)
        for nominal in iter_dates(self.calendar, first):
            day = self._shifted(nominal, self.cal_shift, self.date_shift)
            if day is None:
                return
            found = sorted(
                (t, ssm)
                for ssm in self.daytimes
                for t in self.tz.from_local(day, ssm, self.dst_gap, self.dst_repeat)
            )
            for t, ssm in found:
                yield Slot(t + self.time_shift, nominal, self._local_auto(t, nominal, ssm))

    def earliest(self, d: datetime.date) -> float:
        return self._earliest_shifted(d, self.cal_shift, self.date_shift) + self.time_shift

    def describe(self) -> str:
        daytimes = ", ".join(format_daytime(d) for d in self.daytimes)
        out = f"{_days(self.calendar)} at {daytimes} {self.tz.name}"
        if self.cal_shift:
            out += f" {self.cal_shift:+d} cal days"
        if self.date_shift:
            out += f" {self.date_shift:+d} days"
        return out + _shift_text(self.time_shift)


@dataclass(frozen=True)
class DaytimeSpec:
    """A daytime on a calendar date, moved `cal_shift` calendar dates then `date_shift` days."""

    daytime: float
    cal_shift: int = 0
    date_shift: int = 0

    def __str__(self) -> str:
        out = format_daytime(self.daytime)
        out += f" {self.cal_shift:+d} cal days" if self.cal_shift else ""
        return out + (f" {self.date_shift:+d} days" if self.date_shift else "")


@dataclass(frozen=True)
class DailyIntervalSchedule(_LocalMixin, ScheduleBase):
    """Every `interval` seconds from `start` up to (not including) `stop` on each
    calendar date. The interval is counted in elapsed seconds from the start time;
    start and stop daytimes follow the default DST policy (shift, first)."""

    start: DaytimeSpec
    stop: DaytimeSpec
    interval: float
    tz: Zone = UTC
    calendar: Calendar = ALL_DAYS
    time_shift: float = 0.0

    @property
    def auto_names(self) -> frozenset[str]:
        return frozenset(AUTO_ARGS)

    def _at(self, spec: DaytimeSpec, nominal: datetime.date) -> float | None:
        day = self._shifted(nominal, spec.cal_shift, spec.date_shift)
        return None if day is None else self.tz.from_local(day, spec.daytime)[0]

    def slots(self, since: float) -> Iterator[Slot]:
        since -= self.time_shift  # from here on, unshifted times
        first = min(
            self._first_nominal(since, s.cal_shift, s.date_shift) for s in (self.start, self.stop)
        )
        for nominal in iter_dates(self.calendar, first):
            begin, end = self._at(self.start, nominal), self._at(self.stop, nominal)
            if begin is None or end is None:
                return
            n = max(0, math.ceil((since - begin) / self.interval))
            while (t := begin + n * self.interval) < end:
                auto = self._local_auto(t, nominal, self.tz.to_local(t)[1])
                yield Slot(t + self.time_shift, nominal, auto)
                n += 1

    def earliest(self, d: datetime.date) -> float:
        unshifted = min(
            self._earliest_shifted(d, s.cal_shift, s.date_shift) for s in (self.start, self.stop)
        )
        return unshifted + self.time_shift

    def describe(self) -> str:
        days = "" if self.calendar.name == ALL_DAYS.name else f"{self.calendar}, "
        out = f"{days}every {span(self.interval)} from {self.start} to {self.stop} {self.tz.name}"
        return out + _shift_text(self.time_shift)


class ScheduleRule(Protocol):
    """What a plugin schedule type makes of its keys: the times it is due."""

    def times(self, start: float) -> Iterator[float]:
        """Times (UTC seconds since the epoch) at or after `start`, increasing."""

    def describe(self) -> str:
        """A short human description, like `every 10m`."""


@dataclass(frozen=True)
class PluginSchedule(ScheduleBase):
    """A schedule of a plugin type: its times are the rule's, in UTC; the keys every
    schedule has (`enabled`, `args`, `start_date`, `end_date`, `jitter`) work as for
    the built-in types. A rule that raises yields no more times, and says why in
    `failure` (the sanity checker reports it); a time that is not a finite number
    is skipped, and said there too."""

    type_name: str
    rule: ScheduleRule = field(compare=False)
    # What went wrong in the rule last (a one-item list: the dataclass is frozen).
    failure: list[str] = field(default_factory=list, compare=False, repr=False)

    def slots(self, start: float) -> Iterator[Slot]:
        try:
            times = iter(self.rule.times(start))
        except Exception as exc:
            self.failure[:] = [f"times() raised {type(exc).__name__}: {exc}"[:300]]
            return
        while True:
            try:
                t = next(times)
            except StopIteration:
                return
            except Exception as exc:  # the plugin's bug ends its times
                self.failure[:] = [f"times() raised {type(exc).__name__}: {exc}"[:300]]
                return
            if isinstance(t, int | float) and not isinstance(t, bool) and math.isfinite(t):
                yield _utc_slot(float(t))
            else:
                self.failure[:] = [f"times() gave {t!r}, not a time"[:300]]

    def describe(self) -> str:
        try:
            return str(self.rule.describe())
        except Exception as exc:
            return f"{self.type_name} ({type(exc).__name__} describing it)"


@dataclass(frozen=True)
class DurationStop:
    """Stop a run this long after its schedule time."""

    duration: float

    def stop_time(self, t: float) -> float:
        return t + self.duration

    def text(self) -> str:
        return f"stop after {span(self.duration)}"


@dataclass(frozen=True)
class DaytimeStop:
    """Stop a run at the next occurrence of a daytime after its schedule time."""

    daytime: float
    tz: Zone = UTC

    def stop_time(self, t: float) -> float:
        day, _ = self.tz.to_local(t)
        for offset in range(3):
            for stop in self.tz.from_local(day + datetime.timedelta(offset), self.daytime):
                if stop > t:
                    return stop
        return t + DAY  # only reachable in zones that skip whole days

    def text(self) -> str:
        return f"stop at {format_daytime(self.daytime)} {self.tz.name}"


@dataclass(frozen=True)
class StopSchedule:
    """A start schedule whose runs are stopped at a stop time."""

    start: ScheduleBase
    stop: DurationStop | DaytimeStop
    key: str = ""

    @property
    def enabled(self) -> bool:
        return self.start.enabled

    @property
    def auto_names(self) -> frozenset[str]:
        return self.start.auto_names

    @property
    def args(self) -> Mapping[str, str]:
        return self.start.args

    def due(self, start: float, params: tuple[str, ...]) -> Iterator[Due]:
        for due in self.start.due(start, params):
            yield replace(due, stop_time=self.stop.stop_time(due.time))

    def text(self) -> str:
        return f"{self.start.text()}, {self.stop.text()}"
