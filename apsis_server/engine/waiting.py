"""Waiting runs: checking their conditions when something they depend on changes.

No polling: each waiting run is filed under the job ids its verdict watches, and
the engine calls `changed(job_ids)` after every commit with the jobs whose runs
changed. Runs are re-checked in (schedule time, run id) order, each decision
applied before the next run is checked.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from apsis_common.states import FINISHED, State
from apsis_server.core.jobs import ADHOC_JOB
from apsis_server.core.runs import Run
from apsis_server.core.templates import TemplateError
from apsis_server.core.waiting import Verdict, check
from apsis_server.store.base import RunFilter

if TYPE_CHECKING:
    from apsis_server.engine.engine import Engine


class EngineRuns:
    """The `RunsView` of the engine: unfinished runs from memory, history from the store."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def _unfinished(self, job_id: str) -> Iterable[Run]:
        runs = self._engine.runs
        return (runs[r] for r in self._engine.by_job.get(job_id, ()))

    def exists(
        self, job_id: str, args: Mapping[str, str], states: Sequence[State], exclude: str
    ) -> bool:
        live = [s for s in states if s not in FINISHED]
        if live:
            for run in self._unfinished(job_id):
                if (
                    run.run_id != exclude
                    and run.state in live
                    and all(run.args.get(k) == v for k, v in args.items())
                ):
                    return True
        done = tuple(s for s in states if s in FINISHED)
        if not done:
            return False
        found = self._engine.store.query(RunFilter(job_id=job_id, states=done, args=args, limit=2))
        return any(r.run_id != exclude and r.run_id not in self._engine.runs for r in found)

    def count(self, job_id: str, args: Mapping[str, str] | None, states: Sequence[State]) -> int:
        return sum(
            1
            for run in self._unfinished(job_id)
            if run.state in states
            and (args is None or all(run.args.get(k) == v for k, v in args.items()))
        )

    def params(self, job_id: str) -> tuple[str, ...] | None:
        job = self._engine.jobs.get(job_id)
        return None if job is None else job.params


class Waiter:
    """Owns the waiting runs' watch index and applies their verdicts."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._view = EngineRuns(engine)
        self._watching: dict[str, set[str]] = {}  # job id → waiting run ids
        self._watches: dict[str, tuple[str, ...]] = {}  # run id → job ids
        self._last: dict[str, str] = {}  # run id → last wait message logged
        self.default_max_time: float | None = None

    def enter(self, run: Run) -> None:
        """A run has just become waiting (or is waiting after a restart)."""
        job = self._engine.job_of(run)
        limit = self.default_max_time
        if job is not None and job.has_waiting_limit:
            limit = job.waiting_max_time
        if limit is not None:
            since = run.times.get(State.WAITING.value, self._engine.clock())
            self._engine.timers.add(since + limit, run.run_id, "waiting-limit")
        self._check(run)

    def expire(self, run: Run) -> None:
        """The waiting limit of `run` has passed."""
        if run.state == State.WAITING:
            self.forget(run.run_id)
            waited = self._engine.clock() - run.times.get(State.WAITING.value, 0.0)
            self._engine.transition(run, State.ERROR, f"waited too long ({waited:.0f}s)")

    def changed(self, job_ids: Iterable[str]) -> None:
        """Runs of these jobs changed: re-check the waiting runs that watch them."""
        candidates = {r for j in job_ids for r in self._watching.get(j, ())}
        runs = [self._engine.runs.get(r) for r in candidates]
        for run in sorted(
            (r for r in runs if r is not None and r.state == State.WAITING),
            key=lambda r: (r.schedule_time or 0.0, int(r.run_id[1:])),
        ):
            current = self._engine.runs.get(run.run_id)
            if current is not None and current.state == State.WAITING:
                self._check(current)

    def forget(self, run_id: str) -> None:
        for job_id in self._watches.pop(run_id, ()):
            watchers = self._watching.get(job_id)
            if watchers is not None:
                watchers.discard(run_id)
                if not watchers:
                    del self._watching[job_id]
        self._last.pop(run_id, None)

    def waiting_for(self, run_id: str) -> tuple[str, ...]:
        return self._watches.get(run_id, ())

    def _check(self, run: Run) -> None:
        engine = self._engine
        job = engine.job_of(run)
        if job is None and not (run.ad_hoc and run.job_id == ADHOC_JOB):
            # Gone, and its conditions with it (after a restart: none were bound).
            self.forget(run.run_id)
            engine.transition(run, State.ERROR, f"job {run.job_id} no longer exists")
            return
        conditions = job.conditions if job is not None else ()
        scope = {**run.args, "args": run.args, "run_id": run.run_id, "job_id": run.job_id}
        try:
            verdict = check(
                run, conditions, self._view, lambda t: engine.templates.expand(t, scope)
            )
        except (TemplateError, ValueError) as exc:
            verdict = Verdict("error", f"condition failed: {exc}")
        if verdict.kind == "wait":
            self._watch(run.run_id, verdict.watch)
            if self._last.get(run.run_id) != verdict.message:
                self._last[run.run_id] = verdict.message
                engine.note(run.run_id, verdict.message)
            return
        self.forget(run.run_id)
        if verdict.kind == "ready":
            engine.starter.start(run, "conditions met" if conditions else "starting")
        elif verdict.kind == "finish" and verdict.state is not None:
            engine.transition(run, verdict.state, verdict.message)
        else:
            engine.transition(run, State.ERROR, verdict.message)

    def _watch(self, run_id: str, job_ids: tuple[str, ...]) -> None:
        if self._watches.get(run_id) == job_ids:
            return
        self.forget(run_id)
        self._watches[run_id] = job_ids
        for job_id in job_ids:
            self._watching.setdefault(job_id, set()).add(run_id)
