"""`time_shift` on daily and daily-interval schedules, as the earlier Apsis took it:
each time moves by the shift, the args stay those of the unshifted time."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from apsis_common.times import format_time, parse_time
from apsis_server.core.fields import Invalid, signed_duration
from apsis_server.core.schedules import Due, ScheduleContext, parse_schedule

NY = "America/New_York"
PARAMS = ("date", "daytime", "time")


def T(text: str) -> float:
    return parse_time(text if text.endswith("Z") else text + "Z")


def dues(form: dict[str, Any], start: str, n: int) -> list[Due]:
    schedule = parse_schedule(form, "schedule", ScheduleContext(params=PARAMS))
    return list(itertools.islice(schedule.due(T(start), PARAMS), n))


def shown(due: Due) -> tuple[str, str, str, str]:
    when = (format_time(due.time) or "")[:19]
    return when, due.args["date"], due.args["daytime"], due.args["time"][:19]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("-2m", -120.0), ("- 90s", -90.0), (-120, -120.0), ("1h 30m", 5400.0), (0, 0.0), ("30", 30.0)],
)
def test_signed_durations(text: object, seconds: float) -> None:
    assert signed_duration(text, "time_shift") == seconds


@pytest.mark.parametrize("text", ["--2m", "-", "two minutes", True])
def test_bad_signed_durations(text: object) -> None:
    with pytest.raises(Invalid, match="time_shift"):
        signed_duration(text, "time_shift")


CASES: list[tuple[str, dict[str, Any], str, list[tuple[str, str, str, str]]]] = [
    (
        "daily two minutes early, args of the nominal time",
        {"type": "daily", "daytime": "16:00", "tz": NY, "calendar": "Mon-Fri", "time_shift": "-2m"},
        "2024-01-05T00:00:00",  # a Friday
        [
            ("2024-01-05T20:58:00", "2024-01-05", "16:00:00", "2024-01-05T21:00:00"),
            ("2024-01-08T20:58:00", "2024-01-08", "16:00:00", "2024-01-08T21:00:00"),
        ],
    ),
    (
        "daily shifted late past midnight keeps the nominal date",
        {"type": "daily", "daytime": "23:30", "time_shift": "1h"},
        "2024-01-01T00:00:00",
        [
            ("2024-01-01T00:30:00", "2023-12-31", "23:30:00", "2023-12-31T23:30:00"),
            ("2024-01-02T00:30:00", "2024-01-01", "23:30:00", "2024-01-01T23:30:00"),
            ("2024-01-03T00:30:00", "2024-01-02", "23:30:00", "2024-01-02T23:30:00"),
        ],
    ),
    (
        "daily time shift after the calendar and date shifts",
        {
            "type": "daily",
            "daytime": "20:00",
            "calendar": "Mon-Fri",
            "cal_shift": 1,
            "date_shift": -1,
            "time_shift": -300,
        },
        "2024-01-05T00:00:00",  # Friday's run is on Sunday
        [
            ("2024-01-07T19:55:00", "2024-01-05", "20:00:00", "2024-01-07T20:00:00"),
        ],
    ),
    (
        "daily a start just before a shifted time finds it",
        {"type": "daily", "daytime": "12:00", "time_shift": "-2m"},
        "2024-01-01T11:57:00",
        [("2024-01-01T11:58:00", "2024-01-01", "12:00:00", "2024-01-01T12:00:00")],
    ),
    (
        "daily a start between the shifted and the nominal time skips that day",
        {"type": "daily", "daytime": "12:00", "time_shift": "-2m"},
        "2024-01-01T11:59:00",
        [("2024-01-02T11:58:00", "2024-01-02", "12:00:00", "2024-01-02T12:00:00")],
    ),
    (
        "daily-interval two minutes early (the earlier Apsis's own job file)",
        {
            "type": "daily-interval",
            "calendar": "Mon-Fri",
            "tz": NY,
            "start": "22:00:00",
            "stop": "23:59:59",
            "interval": 300,
            "time_shift": "-2m",
        },
        "2024-01-05T03:00:00",  # Thursday 22:00 in New York
        [
            ("2024-01-05T03:03:00", "2024-01-04", "22:05:00", "2024-01-05T03:05:00"),
            ("2024-01-05T03:08:00", "2024-01-04", "22:10:00", "2024-01-05T03:10:00"),
        ],
    ),
    (
        "daily-interval without a shift, for comparison",
        {"type": "daily-interval", "start": "09:00", "stop": "10:00", "interval": "30m"},
        "2024-01-01T09:10:00",
        [
            ("2024-01-01T09:30:00", "2024-01-01", "09:30:00", "2024-01-01T09:30:00"),
            ("2024-01-02T09:00:00", "2024-01-02", "09:00:00", "2024-01-02T09:00:00"),
        ],
    ),
    (
        "daily-interval with a positive shift",
        {
            "type": "daily-interval",
            "start": "09:00",
            "stop": "10:00",
            "interval": "30m",
            "time_shift": "45s",
        },
        "2024-01-01T09:10:00",
        [
            ("2024-01-01T09:30:45", "2024-01-01", "09:30:00", "2024-01-01T09:30:00"),
            ("2024-01-02T09:00:45", "2024-01-02", "09:00:00", "2024-01-02T09:00:00"),
        ],
    ),
]


@pytest.mark.parametrize(
    ("form", "start", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_time_shift(form: dict[str, Any], start: str, expected: list[tuple[str, ...]]) -> None:
    assert [shown(d) for d in dues(form, start, len(expected))] == expected


def test_time_shift_with_a_start_date_keeps_runs_dated_that_day() -> None:
    form = {"type": "daily", "daytime": "00:01", "time_shift": "-5m", "start_date": "2024-01-02"}
    assert [shown(d) for d in dues(form, "2023-12-30T00:00:00", 1)] == [
        ("2024-01-01T23:56:00", "2024-01-02", "00:01:00", "2024-01-02T00:01:00")
    ]


@pytest.mark.parametrize("kind", ["interval", "explicit", "crontab"])
def test_time_shift_only_on_daily_schedules(kind: str) -> None:
    forms: dict[str, dict[str, Any]] = {
        "interval": {"interval": 60},
        "explicit": {"times": ["2030-01-01T00:00:00Z"]},
        "crontab": {"expr": "0 * * * *"},
    }
    with pytest.raises(Invalid, match=r"schedule\.time_shift: unknown key"):
        parse_schedule({"type": kind, **forms[kind], "time_shift": "1m"}, "schedule")


def test_time_shift_in_the_text() -> None:
    daily = parse_schedule({"type": "daily", "daytime": "16:00", "time_shift": "-2m"}, "schedule")
    assert daily.text().endswith("time shift -2m")
    form = {"type": "daily-interval", "start": "09:00", "stop": "10:00", "interval": 60}
    interval = parse_schedule({**form, "time_shift": 90}, "schedule")
    assert interval.text().endswith("time shift +1m 30s")
