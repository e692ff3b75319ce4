"""Schedule types against hand-checked expected times (UTC unless a zone is named)."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from apsis_common.times import format_time, parse_time
from apsis_server.core.calendars import parse_calendar_data
from apsis_server.core.schedules import Due, ScheduleContext, parse_schedule
from apsis_server.core.templates import Templates

NY = "America/New_York"


def T(text: str) -> float:
    return parse_time(text if text.endswith("Z") else text + "Z")


def dues(form: Any, start: str, n: int, params: tuple[str, ...] = (), **ctx: Any) -> list[Due]:
    schedule = parse_schedule(form, "schedule", ScheduleContext(params=params, **ctx))
    return list(itertools.islice(schedule.due(T(start), params), n))


def times(form: Any, start: str, n: int, **ctx: Any) -> list[str]:
    return [(format_time(d.time) or "")[:19] for d in dues(form, start, n, **ctx)]


CASES: list[tuple[str, dict[str, Any], str, list[str]]] = [
    (
        "interval on the hour",
        {"type": "interval", "interval": "1h"},
        "2024-01-01T10:20:00",
        ["2024-01-01T11:00:00", "2024-01-01T12:00:00", "2024-01-01T13:00:00"],
    ),
    (
        "interval with phase",
        {"type": "interval", "interval": "1h", "phase": "15m"},
        "2024-01-01T10:20:00",
        ["2024-01-01T11:15:00", "2024-01-01T12:15:00", "2024-01-01T13:15:00"],
    ),
    (
        "interval start on a boundary is included",
        {"type": "interval", "interval": 600},
        "2024-01-01T10:20:00",
        ["2024-01-01T10:20:00", "2024-01-01T10:30:00", "2024-01-01T10:40:00"],
    ),
    (
        "explicit: sorted, deduplicated, from start",
        {
            "type": "explicit",
            "times": ["2024-01-03T00:00:00Z", "2024-01-01T00:00:00Z", "2024-01-02T00:00:00+00:00"],
        },
        "2024-01-01T12:00:00",
        ["2024-01-02T00:00:00", "2024-01-03T00:00:00"],
    ),
    (
        "daily two daytimes in New York (EST)",
        {"type": "daily", "daytime": ["16:00", "09:30:00"], "tz": NY},
        "2024-01-10T15:00:00",
        ["2024-01-10T21:00:00", "2024-01-11T14:30:00", "2024-01-11T21:00:00"],
    ),
    (
        "daily Mon-Fri skips the weekend",
        {"type": "daily", "daytime": "17:00", "tz": NY, "calendar": "Mon-Fri"},
        "2024-01-12T23:00:00",  # Friday after 17:00 EST
        ["2024-01-15T22:00:00", "2024-01-16T22:00:00"],
    ),
    (
        "daily Mon,Wed,Fri",
        {"type": "daily", "daytime": "12:00", "calendar": "Mon,Wed,Fri"},
        "2024-01-01T00:00:00",  # a Monday
        ["2024-01-01T12:00:00", "2024-01-03T12:00:00", "2024-01-05T12:00:00"],
    ),
    (
        "daily across spring forward in New York keeps local time",
        {"type": "daily", "daytime": "09:00", "tz": NY},
        "2024-03-09T00:00:00",
        ["2024-03-09T14:00:00", "2024-03-10T13:00:00", "2024-03-11T13:00:00"],
    ),
    (
        "daily cal_shift +1: next business day",
        {"type": "daily", "daytime": "08:00", "calendar": "Mon-Fri", "cal_shift": 1},
        "2024-01-11T00:00:00",  # Thursday
        # nominal Wed → Thu, Thu → Fri, Fri → Mon, Mon → Tue
        ["2024-01-11T08:00:00", "2024-01-12T08:00:00", "2024-01-15T08:00:00"],
    ),
    (
        "daily date_shift -1: the evening before",
        {"type": "daily", "daytime": "20:00", "calendar": "Mon-Fri", "date_shift": -1},
        "2024-01-12T00:00:00",  # Friday
        # nominal Mon Jan 15 → Sun Jan 14
        ["2024-01-14T20:00:00", "2024-01-15T20:00:00", "2024-01-16T20:00:00"],
    ),
    (
        "daily-interval Tokyo every 30 min from 08:00 to 09:30",
        {
            "type": "daily-interval",
            "start": "08:00",
            "stop": "09:30",
            "interval": "30m",
            "tz": "Asia/Tokyo",
        },
        "2024-01-01T00:00:00",  # 09:00 JST
        ["2024-01-01T00:00:00", "2024-01-01T23:00:00", "2024-01-01T23:30:00"],
    ),
    (
        "daily-interval starting mid-window rounds up to the grid",
        {"type": "daily-interval", "start": "10:00", "stop": "11:00", "interval": 1200},
        "2024-01-01T10:05:00",
        ["2024-01-01T10:20:00", "2024-01-01T10:40:00", "2024-01-02T10:00:00"],
    ),
    (
        "daily-interval overnight with a shifted stop",
        {
            "type": "daily-interval",
            "start": "23:00",
            "stop": {"daytime": "01:00", "date_shift": 1},
            "interval": "1h",
        },
        "2024-01-01T00:00:00",  # inside the window that began on Dec 31
        ["2024-01-01T00:00:00", "2024-01-01T23:00:00", "2024-01-02T00:00:00"],
    ),
    (
        "crontab every 15 min, 9-17, weekdays",
        {"type": "crontab", "expr": "*/15 9-17 * * 1-5"},
        "2024-01-12T17:40:00",  # Friday
        ["2024-01-12T17:45:00", "2024-01-15T09:00:00", "2024-01-15T09:15:00"],
    ),
    (
        "crontab day OR weekday when both are restricted",
        {"type": "crontab", "expr": "0 0 13 * fri"},
        "2024-01-01T00:00:00",
        ["2024-01-05T00:00:00", "2024-01-12T00:00:00", "2024-01-13T00:00:00"],
    ),
    (
        "crontab day AND weekday when the day field starts with *",
        {"type": "crontab", "expr": "0 0 */2 * 5"},
        "2024-01-01T00:00:00",
        # odd days that are Fridays: Jan 5, Jan 19, Feb 9
        ["2024-01-05T00:00:00", "2024-01-19T00:00:00", "2024-02-09T00:00:00"],
    ),
    (
        "crontab names, lists and 7 for Sunday",
        {"type": "crontab", "expr": "30 6 * jan,FEB sun,7"},
        "2024-01-01T00:00:00",
        ["2024-01-07T06:30:00", "2024-01-14T06:30:00", "2024-01-21T06:30:00"],
    ),
    (
        "crontab with a sixth seconds field",
        {"type": "crontab", "expr": "0 12 1 1 * 10,40"},
        "2024-01-01T00:00:00",
        ["2024-01-01T12:00:10", "2024-01-01T12:00:40", "2025-01-01T12:00:10"],
    ),
    (
        "crontab by fields, in a zone",
        {"type": "crontab", "minute": 0, "hour": "8", "weekday": "mon", "tz": NY},
        "2024-01-01T00:00:00",
        ["2024-01-01T13:00:00", "2024-01-08T13:00:00", "2024-01-15T13:00:00"],
    ),
    (
        "crontab macro",
        {"type": "crontab", "expr": "@monthly"},
        "2024-01-15T00:00:00",
        ["2024-02-01T00:00:00", "2024-03-01T00:00:00", "2024-04-01T00:00:00"],
    ),
    (
        "crontab leap day",
        {"type": "crontab", "expr": "0 0 29 2 *"},
        "2024-03-01T00:00:00",
        ["2028-02-29T00:00:00", "2032-02-29T00:00:00"],
    ),
    (
        "start_date and end_date bound a daily schedule (inclusive)",
        {"type": "daily", "daytime": "12:00", "start_date": "2024-02-03", "end_date": "2024-02-05"},
        "2024-01-01T00:00:00",
        ["2024-02-03T12:00:00", "2024-02-04T12:00:00", "2024-02-05T12:00:00"],
    ),
    (
        "end_date makes an interval schedule finite",
        {"type": "interval", "interval": "8h", "end_date": "2024-01-01"},
        "2024-01-01T05:00:00",
        ["2024-01-01T08:00:00", "2024-01-01T16:00:00"],
    ),
    (
        "start_date far ahead is reached without walking every interval",
        {"type": "interval", "interval": 1, "start_date": "2030-06-01"},
        "2024-01-01T00:00:00",
        ["2030-06-01T00:00:00", "2030-06-01T00:00:01", "2030-06-01T00:00:02"],
    ),
]


@pytest.mark.parametrize(
    ("form", "start", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_schedule_times(form: dict[str, Any], start: str, expected: list[str]) -> None:
    assert times(form, start, len(expected) + 1)[: len(expected)] == expected
    if "end_date" in form:
        assert times(form, start, 100) == expected


def test_date_arg_keeps_the_nominal_date_under_shifts() -> None:
    form = {
        "type": "daily",
        "daytime": "17:30",
        "tz": NY,
        "calendar": "Mon-Fri",
        "cal_shift": 1,
        "date_shift": -1,
    }
    got = dues(form, "2024-03-08T00:00:00", 2, params=("date", "daytime", "tz", "calendar"))
    # Friday Mar 8 shifts to Monday Mar 11, then back a day: Sunday Mar 10 (EDT).
    assert format_time(got[0].time) == "2024-03-10T21:30:00.000000Z"
    assert got[1].args["date"] == "2024-03-11"
    assert got[0].args == {
        "date": "2024-03-08",
        "daytime": "17:30:00",
        "tz": NY,
        "calendar": "Mon-Fri",
    }


def test_auto_args_only_for_params_and_explicit_args_win() -> None:
    form = {"type": "interval", "interval": "1d", "args": {"date": "fixed", "region": "eu"}}
    got = dues(form, "2024-01-01T00:00:00", 1, params=("date", "time", "region"))
    assert got[0].args == {"time": "2024-01-01T00:00:00.000000Z", "date": "fixed", "region": "eu"}


def test_templated_args_expand_with_helpers() -> None:
    form = {"type": "daily", "daytime": "06:00", "args": {"prev": "{{ Date(date) - 1 }}"}}
    ctx = {"templates": Templates(), "job_id": "j"}
    got = dues(form, "2024-03-01T00:00:00", 1, params=("prev",), **ctx)
    assert got[0].args == {"prev": "2024-02-29"}
    assert got[0].error is None


def test_failing_arg_template_reports_on_the_due() -> None:
    form = {"type": "interval", "interval": 60, "args": {"x": "{{ Date('garbage') }}"}}
    got = dues(form, "2024-01-01T00:00:00", 1, params=("x",), templates=Templates())
    assert got[0].error is not None and "schedule arg x" in got[0].error


@pytest.mark.parametrize(
    ("stop", "expected"),
    [
        ({"type": "duration", "duration": "90m"}, "2024-01-02T16:00:00"),
        ({"type": "daytime", "daytime": "16:00", "tz": NY}, "2024-01-02T21:00:00"),
        ({"type": "daytime", "daytime": "09:00", "tz": NY}, "2024-01-03T14:00:00"),
    ],
)
def test_stop_schedules(stop: dict[str, Any], expected: str) -> None:
    form = {"start": {"type": "daily", "daytime": "09:30", "tz": NY}, "stop": stop}
    got = dues(form, "2024-01-02T00:00:00", 1)
    assert format_time(got[0].time) == "2024-01-02T14:30:00.000000Z"
    assert (format_time(got[0].stop_time) or "")[:19] == expected


def test_jitter_is_deterministic_and_keeps_order() -> None:
    form = {"type": "interval", "interval": 60, "jitter": "5m"}
    a = dues(form, "2024-01-01T00:00:00", 200, job_id="jobs/a")
    b = dues(form, "2024-01-01T00:00:00", 200, job_id="jobs/a")
    other = dues(form, "2024-01-01T00:00:00", 200, job_id="jobs/b")
    assert [d.time for d in a] == [d.time for d in b]
    assert [d.time for d in a] != [d.time for d in other]
    assert all(x.time < y.time for x, y in itertools.pairwise(a))
    assert all(d.time >= T("2024-01-01T00:00:00") for d in a)
    # Restarting from any due time yields the same sequence from there on.
    schedule = parse_schedule(form, "schedule", ScheduleContext(job_id="jobs/a"))
    later = list(itertools.islice(schedule.due(a[50].time, ()), 10))
    assert [d.time for d in later] == [d.time for d in a[50:60]]


def test_jitter_delay_relative_to_nominal_time() -> None:
    form = {"type": "daily", "daytime": "12:00", "jitter": "30s"}
    got = dues(form, "2024-01-01T00:00:00", 30, params=("time",), job_id="x")
    for due in got:
        nominal = parse_time(due.args["time"])
        assert 0 <= due.time - nominal < 30


def test_named_holiday_calendar() -> None:
    holidays = parse_calendar_data(
        "nyse",
        {"weekdays": "Mon-Fri", "holidays": ["2024-01-01", "2024-01-15 MLK day"]},
    )
    form = {"type": "daily", "daytime": "12:00", "calendar": "nyse"}
    got = times(form, "2023-12-29T13:00:00", 4, calendars={"nyse": holidays})
    assert got == [
        "2024-01-02T12:00:00",
        "2024-01-03T12:00:00",
        "2024-01-04T12:00:00",
        "2024-01-05T12:00:00",
    ]
    mlk = times(form, "2024-01-12T13:00:00", 1, calendars={"nyse": holidays})
    assert mlk == ["2024-01-16T12:00:00"]
    # The calendar covers 2024 only: the schedule ends with it.
    assert times(form, "2024-12-30T00:00:00", 10, calendars={"nyse": holidays}) == [
        "2024-12-30T12:00:00",
        "2024-12-31T12:00:00",
    ]


def test_text_describes_schedules() -> None:
    daily = parse_schedule(
        {"type": "daily", "daytime": "09:30", "tz": NY, "calendar": "Mon-Fri", "cal_shift": 1},
        "schedule",
    )
    assert daily.text() == "Mon-Fri at 09:30:00 America/New_York +1 cal days"
    cron = parse_schedule({"type": "crontab", "expr": "*/5 * * * *", "enabled": False}, "s")
    assert cron.text() == "cron */5 * * * * UTC"  # `enabled` says it is off
    assert not cron.enabled
    window = parse_schedule(
        {"type": "daily-interval", "start": "08:00", "stop": "18:00", "interval": 1800}, "s"
    )
    assert window.text() == "every 30m from 08:00:00 to 18:00:00 UTC"
    explicit = parse_schedule({"type": "explicit", "times": ["2027-01-01T00:00:00Z"]}, "s")
    assert explicit.text() == "at 2027-01-01 00:00:00 UTC"  # no microseconds


def test_schedule_key_is_stable_and_distinct() -> None:
    a = parse_schedule({"type": "interval", "interval": 60}, "s")
    b = parse_schedule({"interval": 60, "type": "interval"}, "s")
    c = parse_schedule({"type": "interval", "interval": 61}, "s")
    assert a.key == b.key != c.key
