"""The planner: which scheduled runs to create, from jobs, cursors and the time.

Pure: the engine passes the time and what already exists, and applies the plan.
A schedule's cursor is the last schedule time planned for it; planning resumes
strictly after it, so a (job, schedule, time) identity is planned once only.
At most `max_per_schedule` runs of one schedule wait in `scheduled` at a time,
so ten thousand one-minute jobs stay small; the rest are planned as they come due.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from apsis_server.core.jobs import Job
from apsis_server.core.schedules import Due

Key = tuple[str, str]


@dataclass(frozen=True)
class Planned:
    job_id: str
    schedule_key: str
    due: Due


@dataclass(frozen=True)
class Horizon:
    """How far ahead to plan, and how many runs per schedule at most."""

    seconds: float = 86400.0
    max_per_schedule: int = 16


def plan_job(
    job: Job,
    cursors: Mapping[Key, float],
    pending: Mapping[Key, int],
    now: float,
    horizon: Horizon,
) -> tuple[list[Planned], dict[Key, float]]:
    """New runs for one job's schedules, and the schedules' new cursors."""
    planned: list[Planned] = []
    new_cursors: dict[Key, float] = {}
    end = now + horizon.seconds
    for schedule in job.schedules:
        if not schedule.enabled:
            continue
        key = (job.job_id, schedule.key)
        room = horizon.max_per_schedule - pending.get(key, 0)
        cursor = cursors.get(key)
        start = now if cursor is None else max(now, cursor)
        last = None
        if room > 0:
            for due in schedule.due(start, job.params):
                if cursor is not None and due.time <= cursor:
                    continue
                if due.time >= end:
                    break
                planned.append(Planned(job.job_id, schedule.key, due))
                last = due.time
                room -= 1
                if room == 0:
                    break
        if last is not None:
            new_cursors[key] = last
    return planned, new_cursors
