"""What a run waits for, and which waiting runs wait for it (dependency conditions)."""

from __future__ import annotations

from apsis_common.states import State
from apsis_server.api.views import Dependencies, Dependency, DependencyRun
from apsis_server.core.conditions import DependencyCondition
from apsis_server.core.runs import Run
from apsis_server.core.templates import TemplateError
from apsis_server.core.waiting import dependency_args
from apsis_server.engine.engine import Engine
from apsis_server.engine.waiting import RunsView
from apsis_server.store.base import RunFilter


def _targets(engine: Engine, run: Run) -> list[tuple[DependencyCondition, str, dict[str, str]]]:
    job = engine.jobs.get(run.job_id)
    scope = {**run.args, "args": run.args, "run_id": run.run_id, "job_id": run.job_id}
    out = []
    for cond in job.conditions if job is not None else ():
        if not isinstance(cond, DependencyCondition):
            continue
        try:

            def expand(text: str) -> str:
                return engine.expand(text, scope)

            args = dependency_args(cond, run, RunsView(engine), expand)
            out.append((cond, expand(cond.job_id), args))
        except (TemplateError, ValueError):
            continue
    return out


def dependencies(engine: Engine, run: Run) -> Dependencies:
    """What `run` waits for, and which waiting runs wait for it."""
    waits_for = []
    for cond, job_id, args in _targets(engine, run):
        found = engine.store.query(RunFilter(job_id=job_id, args=args, limit=5))
        runs = [engine.runs.get(r.run_id, r) for r in found]
        waits_for.append(
            Dependency(
                job_id=job_id,
                args=args,
                states=list(cond.states),
                satisfied=any(r.state in cond.states for r in runs),
                runs=[DependencyRun(r.run_id, r.state) for r in runs],
            )
        )
    waited_by = []
    for other in engine.runs.values():
        if other.state != State.WAITING or other.run_id == run.run_id:
            continue
        for _, job_id, args in _targets(engine, other):
            if job_id == run.job_id and all(run.args.get(k) == v for k, v in args.items()):
                waited_by.append(other.run_id)
                break
    return Dependencies(waits_for, sorted(waited_by, key=lambda r: int(r[1:])))
