"""Planning: keeping every schedule's runs created ahead, up to the horizon.

The planner (`core.planner`) decides which runs each schedule needs from its
cursor (the last time planned) and how many of its runs are still scheduled;
`Planning` keeps those cursors and counts and returns what to create as a
decision (`Plan`), which the engine applies: it creates the runs and writes the
moved cursors with its changes. The engine tells `scheduled` and `unscheduled` as
runs of a schedule enter and leave `scheduled`, so the counts stay current.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from apsis_common.states import State
from apsis_server.core.jobs import Job
from apsis_server.core.planner import Horizon, Key, Planned, plan_job
from apsis_server.core.runs import Identity, Run, args_key


@dataclass(frozen=True)
class Plan:
    """Runs to create, and the cursors moved."""

    runs: list[Planned] = field(default_factory=list)
    cursors: dict[Key, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Replan:
    """What new job definitions change: scheduled runs to withdraw, cursors moved
    back to now, and the jobs to plan again."""

    withdraw: list[Run]
    cursors: dict[Key, float]
    plan: list[str]
    added: list[str]
    changed: list[str]
    removed: list[str]


class Planning:
    """Owns the schedule cursors and the count of scheduled runs per schedule."""

    def __init__(self, horizon: Horizon) -> None:
        self.horizon = horizon
        self._cursors: dict[Key, float] = {}
        self._pending: dict[Key, int] = {}

    def plan(
        self,
        jobs: Iterable[Job],
        now: float,
        taken: Callable[[str], set[Identity]] | None = None,
    ) -> Plan:
        """The scheduled runs the planner asks for, up to the horizon; the cursors
        move as planned.

        `taken`: cursors were moved back (a reload), so times may come up that
        already have a run (skipped or started by hand, or finished): those it
        names for a job are left alone, so no (job, schedule time, args) is ever
        planned twice."""
        plan = Plan()
        for job in jobs:
            planned, cursors = plan_job(job, self._cursors, self._pending, now, self.horizon)
            if taken is not None:
                had = taken(job.job_id)
                planned = [i for i in planned if (i.due.time, args_key(i.due.args)) not in had]
            plan.runs.extend(planned)
            plan.cursors.update(cursors)
            self._cursors.update(cursors)
        return plan

    def replan(
        self,
        old: Mapping[str, Job],
        new: Mapping[str, Job],
        scheduled: Callable[[str], Iterable[Run]],
        now: float,
    ) -> Replan:
        """What taking `new` job definitions in place of `old` means: the scheduled
        runs of changed and removed jobs are withdrawn (runs scheduled by hand and
        runs already due stay) and their schedules planned again from now."""
        added = sorted(set(new) - set(old))
        removed = sorted(set(old) - set(new))
        changed = sorted(j for j in set(new) & set(old) if new[j] != old[j])
        withdraw = []
        cursors: dict[Key, float] = {}
        for job_id in changed + removed:
            for run in scheduled(job_id):
                # A run already due stays: it starts under the new definition.
                due = (run.schedule_time or 0.0) <= now and job_id in new
                if run.state == State.SCHEDULED and run.schedule_key is not None and not due:
                    withdraw.append(run)
            cursors.update({k: now for k in self._cursors if k[0] == job_id})
        for job_id in changed:
            cursors.update({(job_id, s.key): now for s in new[job_id].schedules})
        self._cursors.update(cursors)
        return Replan(withdraw, cursors, added + changed, added, changed, removed)

    # -- what the engine tells -------------------------------------------------

    def scheduled(self, run: Run) -> None:
        """A run has entered `scheduled` (or is scheduled after a restart): one
        more of its schedule's, if it has one."""
        if run.schedule_key is not None:
            key = (run.job_id, run.schedule_key)
            self._pending[key] = self._pending.get(key, 0) + 1

    def unscheduled(self, run: Run) -> None:
        """A run has left `scheduled`, or was withdrawn: one fewer of its schedule's."""
        if run.schedule_key is not None:
            key = (run.job_id, run.schedule_key)
            self._pending[key] = max(0, self._pending.get(key, 0) - 1)

    # -- cursors ----------------------------------------------------------------

    def load_cursors(self, cursors: Mapping[Key, float]) -> None:
        """Take the schedule cursors read back from the store (not written again)."""
        self._cursors = dict(cursors)

    def cursor(self, key: Key) -> float | None:
        """How far a schedule is planned: its last planned time, if any."""
        return self._cursors.get(key)

    def set_cursor(self, key: Key, value: float) -> dict[Key, float]:
        """Move a schedule's cursor; the move, for the engine to write."""
        self._cursors[key] = value
        return {key: value}


class PlanAhead(Protocol):
    """What planning ahead forever does: plan some jobs and commit."""

    def job_ids(self) -> list[str]: ...

    def plan(self, job_ids: list[str]) -> int: ...

    def commit(self) -> None: ...


async def plan_ahead(engine: PlanAhead, period: float = 60.0, chunk: int = 100) -> None:
    """Keep every schedule planned ahead, forever, a few jobs at a time so the API
    answers and due runs start while ten thousand jobs are planned."""
    while True:
        job_ids = engine.job_ids()
        for i in range(0, len(job_ids), chunk):
            engine.plan(job_ids[i : i + chunk])
            engine.commit()
            await asyncio.sleep(0)
        await asyncio.sleep(period)
