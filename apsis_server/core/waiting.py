"""Whether a waiting run may start: its conditions checked in order, as a verdict.

Pure: other runs are seen through a `RunsView` the engine provides, templates
are expanded through the function passed in. The engine re-checks a waiting run
only when a run of a job it depends on changes state, in (schedule time, run id)
order, so among duplicates exactly one proceeds and `max_running` never admits
more than its count.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from apsis_common.states import State
from apsis_server.core.conditions import (
    Condition,
    ConstCondition,
    DependencyCondition,
    MaxRunningCondition,
    PluginCondition,
    SkipDuplicateCondition,
)
from apsis_server.core.runs import Run
from apsis_server.core.verdicts import RunsView, Verdict, VerdictKind

__all__ = ["RunsView", "Verdict", "VerdictKind", "check", "dependency_args"]

ACTIVE = (State.STARTING, State.RUNNING, State.STOPPING)


Expand = Callable[[str], str]


def dependency_args(
    cond: DependencyCondition, run: Run, view: RunsView, expand: Expand
) -> dict[str, str]:
    """The args a dependency looks for: its own (templated), then shared params."""
    args = {k: expand(v) for k, v in cond.args.items()}
    for name in view.params(expand(cond.job_id)) or ():
        if name not in args and name in run.args:
            args[name] = run.args[name]
    return args


def _describe(job_id: str, args: Mapping[str, str]) -> str:
    shown = " ".join(f"{k}={v}" for k, v in sorted(args.items()))
    return f"{job_id} {shown}".strip()


def _dependency(
    cond: DependencyCondition, run: Run, view: RunsView, expand: Expand, waited: float
) -> Verdict | None:
    job_id = expand(cond.job_id)
    if view.params(job_id) is None:
        return Verdict(VerdictKind.ERROR, f"dependency on unknown job {job_id}")
    args = dependency_args(cond, run, view, expand)
    if view.exists(job_id, args, cond.states, run.run_id):
        return None
    what = _describe(job_id, args)
    if cond.exist is not None and not view.exists(job_id, args, cond.exist, run.run_id):
        states = "/".join(s.value for s in cond.exist)
        return Verdict(VerdictKind.ERROR, f"no run of {what} is {states}")
    states = "/".join(s.value for s in cond.states)
    if cond.max_wait is not None and waited >= cond.max_wait:
        kind = VerdictKind.SKIP if cond.on_timeout == State.SKIPPED else VerdictKind.ERROR
        message = f"gave up waiting for {what} to be {states} after {cond.max_wait:g}s (max_wait)"
        return Verdict(kind, message)
    return Verdict(VerdictKind.WAIT, f"waiting for {what} to be {states}", watch=(job_id,))


def _max_running(
    cond: MaxRunningCondition, run: Run, view: RunsView, expand: Expand
) -> Verdict | None:
    job_id = expand(cond.job_id) if cond.job_id else run.job_id
    count = int(expand(cond.count)) if isinstance(cond.count, str) else cond.count
    args: dict[str, str] | None
    if cond.per == "job":
        args = None
    elif cond.args is not None:
        args = {k: expand(v) for k, v in cond.args.items()}
    else:
        args = dict(run.args)
    if view.count(job_id, args, ACTIVE) >= count:
        message = f"at most {count} run(s) of {job_id} at a time: waiting for one to end"
        return Verdict(VerdictKind.WAIT, message, watch=(job_id,))
    return None


def _skip_duplicate(cond: SkipDuplicateCondition, run: Run, view: RunsView) -> Verdict | None:
    if not view.exists(run.job_id, run.args, cond.check_states, run.run_id):
        return None
    states = "/".join(s.value for s in cond.check_states)
    kind = VerdictKind.ERROR if cond.target_state == State.ERROR else VerdictKind.SKIP
    return Verdict(kind, f"a run with the same args is already {states}")


def check(
    run: Run,
    conditions: Sequence[Condition],
    view: RunsView,
    expand: Expand,
    waited: float = 0.0,
) -> Verdict:
    """The first condition that is not satisfied decides; all satisfied → ready.
    `waited`: seconds the run has been waiting (a dependency's `max_wait`).

    A `ValueError` from a template is the caller's to turn into an error.
    """
    for cond in conditions:
        verdict: Verdict | None
        if isinstance(cond, ConstCondition):
            verdict = None if cond.value else Verdict(VerdictKind.WAIT, "const condition is false")
        elif isinstance(cond, DependencyCondition):
            verdict = _dependency(cond, run, view, expand, waited)
        elif isinstance(cond, MaxRunningCondition):
            verdict = _max_running(cond, run, view, expand)
        elif isinstance(cond, PluginCondition):
            verdict = cond.verdict(run, view, expand)
        else:
            verdict = _skip_duplicate(cond, run, view)
        if verdict is not None:
            return verdict
    return Verdict(VerdictKind.READY)
