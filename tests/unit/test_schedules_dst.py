"""Property tests: the DST policy over real transitions, checked against zoneinfo.

zoneinfo (the standard library) is the oracle, independent of ora which the
schedules use. Australia/Lord_Howe moves its clocks by 30 minutes.
"""

from __future__ import annotations

import datetime
import itertools
from functools import cache
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from apsis_server.core.calendars import midnight
from apsis_server.core.schedules import Due, parse_schedule

ZONES = ("America/New_York", "Europe/London", "Australia/Lord_Howe")
UTC = datetime.UTC


@cache
def transition_dates(zone: str) -> tuple[datetime.date, ...]:
    """Dates on whose early morning the zone's UTC offset changes, 2020 to 2030."""
    zi = ZoneInfo(zone)
    out = []
    day = datetime.date(2020, 1, 1)
    noon = datetime.time(12)
    previous = datetime.datetime.combine(day, noon, zi).utcoffset()
    while day < datetime.date(2031, 1, 1):
        day += datetime.timedelta(1)
        offset = datetime.datetime.combine(day, noon, zi).utcoffset()
        if offset != previous:
            out.append(day)
        previous = offset
    return tuple(out)


def _round_trips(naive: datetime.datetime, zi: ZoneInfo, fold: int) -> float | None:
    t = naive.replace(tzinfo=zi, fold=fold).timestamp()
    back = datetime.datetime.fromtimestamp(t, zi).replace(tzinfo=None)
    return t if back == naive else None


def _gap_end(before: float, after: float, zi: ZoneInfo, naive: datetime.datetime) -> float:
    """The first whole second whose local time is past `naive` (a time in a gap)."""
    lo, hi = int(before), int(after) + 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if datetime.datetime.fromtimestamp(mid, zi).replace(tzinfo=None) > naive:
            hi = mid
        else:
            lo = mid
    return float(hi)


def oracle(zone: str, day: datetime.date, ssm: int, gap: str, repeat: str) -> list[float]:
    """The instants the documented policy gives local `day` at `ssm` seconds."""
    zi = ZoneInfo(zone)
    naive = datetime.datetime.combine(day, datetime.time()) + datetime.timedelta(seconds=ssm)
    first, second = _round_trips(naive, zi, 0), _round_trips(naive, zi, 1)
    if first is None and second is None:
        # In a gap: fold=1 uses the later offset, giving an instant before the gap ends.
        if gap == "skip":
            return []
        early = naive.replace(tzinfo=zi, fold=1).timestamp()
        late = naive.replace(tzinfo=zi, fold=0).timestamp()
        return [_gap_end(min(early, late), max(early, late), zi, naive)]
    found = sorted({t for t in (first, second) if t is not None})
    return found if repeat == "both" else found[:1]


def collect(form: dict[str, Any], lo: float, hi: float) -> list[Due]:
    schedule = parse_schedule(form, "schedule")
    out = []
    for due in schedule.due(lo, ("date", "daytime")):
        if due.time >= hi:
            break
        out.append(due)
    return out


def strictly_increasing(dues: list[Due]) -> bool:
    return all(a.time < b.time for a, b in itertools.pairwise(dues))


zones = st.sampled_from(ZONES)
gaps = st.sampled_from(["shift", "skip"])
repeats = st.sampled_from(["first", "both"])
# Daytimes in whole minutes, mostly in the small hours where transitions happen.
small_hours = st.integers(0, 4 * 60 - 1).map(lambda m: m * 60)
daytimes = st.one_of(small_hours, st.integers(0, 24 * 60 - 1).map(lambda m: m * 60))


@st.composite
def near_transition(draw: st.DrawFn) -> tuple[str, datetime.date]:
    zone = draw(zones)
    day = draw(st.sampled_from(transition_dates(zone)))
    return zone, day + datetime.timedelta(draw(st.integers(-1, 1)))


@settings(max_examples=80, deadline=None)
@given(near_transition(), st.lists(daytimes, min_size=1, max_size=3, unique=True), gaps, repeats)
def test_daily_follows_the_dst_policy(
    where: tuple[str, datetime.date], ssms: list[int], gap: str, repeat: str
) -> None:
    zone, day = where
    form = {
        "type": "daily",
        "daytime": [f"{s // 3600:02d}:{s // 60 % 60:02d}" for s in ssms],
        "tz": zone,
        "dst_gap": gap,
        "dst_repeat": repeat,
    }
    lo, hi = midnight(day) - 2 * 86400, midnight(day) + 3 * 86400
    dues = collect(form, lo, hi)
    assert strictly_increasing(dues)
    assert all(d.time >= lo for d in dues)
    expected = sorted({t for s in ssms for t in oracle(zone, day, s, gap, repeat)})
    # Two daytimes in one gap shift to the same instant, which runs once.
    got = sorted(d.time for d in dues if d.args["date"] == day.isoformat())
    assert got == expected


@settings(max_examples=40, deadline=None)
@given(near_transition(), gaps, repeats, st.sampled_from(["*/30 * * * *", "15,45 0-4 * * *"]))
def test_crontab_follows_the_dst_policy(
    where: tuple[str, datetime.date], gap: str, repeat: str, expr: str
) -> None:
    zone, day = where
    form = {"type": "crontab", "expr": expr, "tz": zone, "dst_gap": gap, "dst_repeat": repeat}
    lo, hi = midnight(day) - 86400, midnight(day) + 2 * 86400
    dues = collect(form, lo, hi)
    assert strictly_increasing(dues)
    minutes = [0, 30] if expr.startswith("*/30") else [15, 45]
    hours = range(24) if expr.startswith("*/30") else range(5)
    expected = {
        t for h in hours for m in minutes for t in oracle(zone, day, h * 3600 + m * 60, gap, repeat)
    }
    got = {d.time for d in dues if d.args["date"] == day.isoformat()}
    # A gap-shifted time may coincide with a real one (and run once, dated by the first).
    assert got <= expected
    everything = {d.time for d in dues}
    assert expected <= everything


@settings(max_examples=30, deadline=None)
@given(near_transition(), st.integers(1, 12).map(lambda n: n * 600))
def test_daily_interval_never_repeats_a_time(where: tuple[str, datetime.date], step: int) -> None:
    zone, day = where
    form = {
        "type": "daily-interval",
        "start": "00:30",
        "stop": "04:30",
        "interval": step,
        "tz": zone,
    }
    lo, hi = midnight(day) - 86400, midnight(day) + 2 * 86400
    dues = collect(form, lo, hi)
    assert dues and strictly_increasing(dues)


@settings(max_examples=30, deadline=None)
@given(near_transition(), daytimes)
def test_interval_is_untouched_by_dst(where: tuple[str, datetime.date], phase: int) -> None:
    _, day = where
    lo = midnight(day) - 86400
    dues = collect(
        {"type": "interval", "interval": "1h", "phase": phase % 3600}, lo, lo + 3 * 86400
    )
    assert len(dues) == 72
    assert all(b.time - a.time == 3600 for a, b in itertools.pairwise(dues))
