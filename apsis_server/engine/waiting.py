"""Waiting runs: their conditions checked when something they depend on changes.

No polling: each waiting run is filed under the job ids its verdict watches, and
the engine asks `changed(job_ids)` after every commit which waiting runs to check
again, in (schedule time, run id) order, applying each decision before the next
run is checked. A check returns a decision (`Wait`, `Ready`, or a run event) for
the engine to apply; the waiter itself only keeps its watch index.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from apsis_common.states import FINISHED, State
from apsis_server.core import lifecycle
from apsis_server.core.conditions import DependencyCondition
from apsis_server.core.jobs import ADHOC_JOB, Job
from apsis_server.core.runs import Run
from apsis_server.core.templates import TemplateError
from apsis_server.core.waiting import VerdictKind, check
from apsis_server.store.base import RunFilter


class Runs(Protocol):
    """What checking conditions reads of the runs: unfinished ones from memory,
    history from the store, and the jobs."""

    def unfinished_of(self, job_id: str) -> Iterable[Run]:
        """The unfinished runs of a job."""

    def is_unfinished(self, run_id: str) -> bool: ...

    def query(self, run_filter: RunFilter) -> list[Run]:
        """Runs from the store, as `RunStore.query`."""

    def job(self, job_id: str) -> Job | None: ...

    def job_of(self, run: Run) -> Job | None:
        """The definition a run follows (as bound when it left `scheduled`)."""


class RunsView:
    """The `RunsView` conditions see (core.waiting): whether runs exist, how many."""

    def __init__(self, runs: Runs) -> None:
        self._runs = runs

    def exists(
        self, job_id: str, args: Mapping[str, str], states: Sequence[State], exclude: str
    ) -> bool:
        live = [s for s in states if s not in FINISHED]
        if live:
            for run in self._runs.unfinished_of(job_id):
                if (
                    run.run_id != exclude
                    and run.state in live
                    and all(run.args.get(k) == v for k, v in args.items())
                ):
                    return True
        done = tuple(s for s in states if s in FINISHED)
        if not done:
            return False
        found = self._runs.query(RunFilter(job_id=job_id, states=done, args=args, limit=2))
        return any(r.run_id != exclude and not self._runs.is_unfinished(r.run_id) for r in found)

    def count(self, job_id: str, args: Mapping[str, str] | None, states: Sequence[State]) -> int:
        return sum(
            1
            for run in self._runs.unfinished_of(job_id)
            if run.state in states
            and (args is None or all(run.args.get(k) == v for k, v in args.items()))
        )

    def params(self, job_id: str) -> tuple[str, ...] | None:
        job = self._runs.job(job_id)
        return None if job is None else job.params


@dataclass(frozen=True)
class Wait:
    """Keep waiting; `note` is a new reason to write to the run's log, if any."""

    note: str | None


@dataclass(frozen=True)
class Ready:
    """Start it now, for this reason."""

    why: str


Decision = Wait | Ready | lifecycle.Event
Expand = Callable[[str, Mapping[str, object]], str]


class Waiter:
    """Owns the waiting runs' watch index; decides what each check means."""

    def __init__(self, runs: Runs, expand: Expand, default_max_time: float | None) -> None:
        self._runs = runs
        self._view = RunsView(runs)
        self._expand = expand
        self._default_max_time = default_max_time
        self._watching: dict[str, set[str]] = {}  # job id → waiting run ids
        self._watches: dict[str, tuple[str, ...]] = {}  # run id → job ids
        self._last: dict[str, str] = {}  # run id → last wait message logged

    def limit(self, run: Run) -> float | None:
        """How long `run` may wait: its job's waiting limit, or the default."""
        job = self._runs.job_of(run)
        if job is not None and job.has_waiting_limit:
            return job.waiting_max_time
        return self._default_max_time

    def deadlines(self, run: Run, since: float) -> list[float]:
        """When the run's dependencies with a `max_wait` give up, if it waits from
        `since`: times to check it again."""
        job = self._runs.job_of(run)
        conditions = job.conditions if job is not None else ()
        return [
            since + c.max_wait
            for c in conditions
            if isinstance(c, DependencyCondition) and c.max_wait is not None
        ]

    def check(self, run: Run, now: float) -> Decision:
        """What the run's conditions say now; the watch index follows."""
        job = self._runs.job_of(run)
        if job is None and not (run.ad_hoc and run.job_id == ADHOC_JOB):
            # Gone, and its conditions with it (after a restart: none were bound).
            self.forget(run.run_id)
            return lifecycle.Invalid(f"job {run.job_id} no longer exists")
        conditions = job.conditions if job is not None else ()
        scope = {**run.args, "args": run.args, "run_id": run.run_id, "job_id": run.job_id}
        try:
            waited = now - run.times.get(State.WAITING.value, now)
            verdict = check(run, conditions, self._view, lambda t: self._expand(t, scope), waited)
        except (TemplateError, ValueError) as exc:
            self.forget(run.run_id)
            return lifecycle.ConditionFailed(f"condition failed: {exc}")
        if verdict.kind == VerdictKind.WAIT:
            self._watch(run.run_id, verdict.watch)
            if self._last.get(run.run_id) == verdict.message:
                return Wait(None)
            self._last[run.run_id] = verdict.message
            return Wait(verdict.message)
        self.forget(run.run_id)
        if verdict.kind == VerdictKind.READY:
            return Ready("conditions met" if conditions else "starting")
        if verdict.kind == VerdictKind.SKIP:
            return lifecycle.Skipped(verdict.message)
        return lifecycle.ConditionFailed(verdict.message)

    def changed(self, job_ids: Iterable[str], runs: Mapping[str, Run]) -> list[Run]:
        """The waiting runs to check again because runs of these jobs changed, in
        (schedule time, run id) order."""
        candidates = {r for j in job_ids for r in self._watching.get(j, ())}
        waiting = [runs[r] for r in candidates if r in runs and runs[r].state == State.WAITING]
        return sorted(waiting, key=lambda r: (r.schedule_time or 0.0, int(r.run_id[1:])))

    def forget(self, run_id: str) -> None:
        """The run waits no more."""
        for job_id in self._watches.pop(run_id, ()):
            watchers = self._watching.get(job_id)
            if watchers is not None:
                watchers.discard(run_id)
                if not watchers:
                    del self._watching[job_id]
        self._last.pop(run_id, None)

    def waiting_for(self, run_id: str) -> tuple[str, ...]:
        """The job ids a waiting run watches."""
        return self._watches.get(run_id, ())

    def _watch(self, run_id: str, job_ids: tuple[str, ...]) -> None:
        if self._watches.get(run_id) == job_ids:
            return
        self.forget(run_id)
        self._watches[run_id] = job_ids
        for job_id in job_ids:
            self._watching.setdefault(job_id, set()).add(run_id)
