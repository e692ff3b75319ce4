"""Planning: keeping every schedule's runs created ahead, up to the horizon.

The planner (`core.planner`) decides which runs each schedule needs from its
cursor (the last time planned) and how many of its runs are still scheduled; the
engine creates them and writes the moved cursors with its changes. The engine
tells `scheduled` and `unscheduled` as runs of a schedule enter and leave
`scheduled`, so those counts stay current.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING

from apsis_common.states import State
from apsis_server.core.jobs import Job
from apsis_server.core.planner import Horizon, Key, plan_job
from apsis_server.core.runs import Run, args_key

if TYPE_CHECKING:
    from apsis_server.engine.engine import Engine


class Planning:
    """Owns the schedule cursors and the count of scheduled runs per schedule."""

    def __init__(self, engine: Engine, horizon: Horizon) -> None:
        self._engine = engine
        self.horizon = horizon
        self._cursors: dict[Key, float] = {}
        self._pending: dict[Key, int] = {}

    def set_jobs(self, jobs: Mapping[str, Job]) -> None:
        """Take the job definitions at startup (planned by `run`, not here)."""
        self._engine.jobs = dict(jobs)

    def replace_jobs(self, jobs: Mapping[str, Job]) -> dict[str, list[str]]:
        """Take new job definitions: withdraw and replan the scheduled runs of changed
        and removed jobs (runs scheduled by hand stay); answer what changed."""
        engine = self._engine
        old, now = engine.jobs, engine.clock()
        added = sorted(set(jobs) - set(old))
        removed = sorted(set(old) - set(jobs))
        changed = sorted(j for j in set(jobs) & set(old) if jobs[j] != old[j])
        engine.jobs = dict(jobs)
        for job_id in changed + removed:
            for run_id in list(engine.by_job.get(job_id, ())):
                run = engine.runs[run_id]
                # A run already due stays: it starts under the new definition.
                due = (run.schedule_time or 0.0) <= now and job_id in jobs
                if run.state == State.SCHEDULED and run.schedule_key is not None and not due:
                    engine.withdraw(run)
            for key in [k for k in self._cursors if k[0] == job_id]:
                self.set_cursor(key, now)
        for job_id in changed:
            for schedule in engine.jobs[job_id].schedules:
                self.set_cursor((job_id, schedule.key), now)
        self.plan(added + changed, again=True)
        engine.commit()
        return {"added": added, "changed": changed, "removed": removed}

    def plan(self, job_ids: list[str] | None = None, again: bool = False) -> int:
        """Create the scheduled runs the planner asks for; returns how many.

        `again`: cursors were moved back (a reload), so times may come up that
        already have a run (skipped or started by hand, or finished): those are
        left alone, so no (job, schedule time, args) is ever planned twice."""
        engine = self._engine
        now = engine.clock()
        count = 0
        for job_id in job_ids if job_ids is not None else list(engine.jobs):
            job = engine.jobs.get(job_id)
            if job is None:
                continue
            planned, cursors = plan_job(job, self._cursors, self._pending, now, self.horizon)
            if again:
                taken = engine.scheduled_identities(job_id, now)
                planned = [i for i in planned if (i.due.time, args_key(i.due.args)) not in taken]
            for item in planned:
                run = engine.create(
                    job,
                    dict(item.due.args),
                    item.due.time,
                    schedule_key=item.schedule_key,
                    stop_time=item.due.stop_time,
                )
                if item.due.error is not None:
                    engine.transition(run, State.ERROR, item.due.error)
                count += 1
            self._cursors.update(cursors)
            engine.move_cursors(cursors)
        return count

    async def run(self, period: float = 60.0, chunk: int = 100) -> None:
        """Keep every schedule planned ahead, forever, a few jobs at a time so the
        API answers and due runs start while ten thousand jobs are planned."""
        while True:
            job_ids = list(self._engine.jobs)
            for i in range(0, len(job_ids), chunk):
                self.plan(job_ids[i : i + chunk])
                self._engine.commit()
                await asyncio.sleep(0)
            await asyncio.sleep(period)

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

    def set_cursor(self, key: Key, value: float) -> None:
        """Move a schedule's cursor, written with the current changes."""
        self._cursors[key] = value
        self._engine.move_cursors({key: value})
