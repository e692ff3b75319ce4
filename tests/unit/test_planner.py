"""The planner: up to the horizon, at most `max_per_schedule` scheduled runs per
schedule, each (schedule, time) once, resuming after the cursor."""

from __future__ import annotations

from apsis_common.times import parse_time
from apsis_server.core.jobs import load_yaml, parse_job
from apsis_server.core.planner import Horizon, plan_job
from apsis_server.core.templates import Templates

NOW = parse_time("2024-01-01T00:00:30Z")
JOB = parse_job(
    "j",
    load_yaml(
        "program: x\nschedule:\n"
        "  - {type: interval, interval: 60}\n"
        "  - {type: interval, interval: 3600, enabled: false}\n"
    ),
    Templates(),
)
KEY = ("j", JOB.schedules[0].key)


def test_at_most_max_per_schedule_within_the_horizon() -> None:
    planned, cursors = plan_job(JOB, {}, {}, NOW, Horizon(86400.0, 16))
    times = [p.due.time for p in planned]
    assert times == [NOW + 30 + 60 * i for i in range(16)]  # the disabled one makes none
    assert cursors == {KEY: times[-1]}
    # Some still scheduled: only the room left; the horizon bounds it too.
    assert len(plan_job(JOB, {}, {KEY: 10}, NOW, Horizon(86400.0, 16))[0]) == 6
    assert len(plan_job(JOB, {}, {}, NOW, Horizon(300.0, 16))[0]) == 5
    assert plan_job(JOB, {}, {KEY: 16}, NOW, Horizon(86400.0, 16))[0] == []


def test_planning_resumes_strictly_after_the_cursor() -> None:
    first, cursors = plan_job(JOB, {}, {}, NOW, Horizon(86400.0, 4))
    later, _ = plan_job(JOB, cursors, {KEY: 2}, NOW + 60, Horizon(86400.0, 4))
    assert [p.due.time for p in later] == [first[-1].due.time + 60 * i for i in (1, 2)]
    # A cursor in the past: nothing before now is planned again.
    stale, _ = plan_job(JOB, {KEY: NOW - 3600}, {}, NOW, Horizon(86400.0, 2))
    assert [p.due.time for p in stale] == [NOW + 30, NOW + 90]
