"""Planning helpers: next due times of a job, and catch-up after downtime."""

from __future__ import annotations

import pytest

from apsis_common.times import parse_time
from apsis_server.core.catchup import (
    SKIP_REASON,
    CatchUp,
    CatchUpPolicy,
    catch_up,
)
from apsis_server.core.jobs import load_yaml, next_times, parse_job
from apsis_server.core.schedules import parse_schedule
from apsis_server.core.templates import Templates

H = 3600.0
BASE = parse_time("2024-01-01T00:00:00Z")


def test_next_times_merges_enabled_schedules() -> None:
    job = parse_job(
        "j",
        load_yaml(
            """
program: x
schedule:
  - {type: interval, interval: 2h}
  - {type: interval, interval: 3h}
  - {type: interval, interval: 1h, enabled: false}
"""
        ),
        Templates(),
    )
    got = [(d.time - BASE) / H for d in next_times(job, BASE + 1, 5)]
    assert got == [2, 3, 4, 6, 6]


HOURLY = parse_schedule({"type": "interval", "interval": "1h"}, "schedule")
DISABLED = parse_schedule({"type": "interval", "interval": "1h", "enabled": False}, "schedule")

ALL = CatchUpPolicy.ALL
LATEST = CatchUpPolicy.LATEST
NONE = CatchUpPolicy.NONE


# (name, policy, watermark hours, now hours, hours to run, hours to skip)
CASES: list[tuple[str, CatchUp, float, float, list[float], list[float]]] = [
    ("nothing missed", CatchUp(ALL), 5, 5.5, [], []),
    ("all runs every missed time", CatchUp(ALL, None, 100), 0, 4.5, [1, 2, 3, 4], []),
    ("watermark itself is not missed", CatchUp(ALL, None, 100), 1, 3, [2], []),
    ("now itself is not missed", CatchUp(ALL, None, 100), 0, 3, [1, 2], []),
    ("all capped by max keeps the newest", CatchUp(ALL, None, 2), 0, 4.5, [3, 4], [1, 2]),
    ("all within window", CatchUp(ALL, 2 * H, 100), 0, 4.5, [3, 4], [1, 2]),
    ("all with max zero", CatchUp(ALL, None, 0), 0, 3.5, [], [1, 2, 3]),
    ("latest runs only the last", CatchUp(LATEST, None, 100), 0, 4.5, [4], [1, 2, 3]),
    ("latest outside the window", CatchUp(LATEST, 0.25 * H, 100), 0, 4.5, [], [1, 2, 3, 4]),
    ("none skips everything", CatchUp(NONE), 0, 3.5, [], [1, 2, 3]),
    ("unset fields use the default (latest)", CatchUp(), 0, 3.5, [3], [1, 2]),
]


@pytest.mark.parametrize(
    ("policy", "watermark", "now", "run", "skip"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_catch_up(
    policy: CatchUp, watermark: float, now: float, run: list[float], skip: list[float]
) -> None:
    plan = catch_up([HOURLY, DISABLED], (), BASE + watermark * H, BASE + now * H, policy)
    assert [(m.due.time - BASE) / H for m in plan.run] == run
    assert [(m.due.time - BASE) / H for m in plan.skip] == skip
    assert all(m.schedule_key == HOURLY.key for m in plan.run + plan.skip)
    assert plan.not_listed == 0


def test_catch_up_is_per_schedule() -> None:
    two_hourly = parse_schedule({"type": "interval", "interval": "2h"}, "schedule")
    plan = catch_up([HOURLY, two_hourly], (), BASE, BASE + 4.5 * H, CatchUp(LATEST))
    assert [(m.schedule_key, (m.due.time - BASE) / H) for m in plan.run] == [
        (HOURLY.key, 4),
        (two_hourly.key, 4),
    ]
    assert len(plan.skip) == 3 + 1


def test_catch_up_bounds_what_it_lists() -> None:
    every_second = parse_schedule({"type": "interval", "interval": 1}, "schedule")
    plan = catch_up([every_second], (), BASE, BASE + 100, CatchUp(ALL, None, 3), limit=10)
    assert [m.due.time - BASE for m in plan.run] == [97, 98, 99]
    assert len(plan.skip) == 7 and plan.not_listed == 89


def test_catch_up_dues_carry_args() -> None:
    daily = parse_schedule({"type": "daily", "daytime": "06:00"}, "schedule")
    plan = catch_up([daily], ("date",), BASE, BASE + 2.5 * 86400, CatchUp(LATEST))
    assert [m.due.args for m in plan.run] == [{"date": "2024-01-03"}]
    assert [m.due.args for m in plan.skip] == [{"date": "2024-01-01"}, {"date": "2024-01-02"}]
    assert SKIP_REASON == "missed while the server was down"
