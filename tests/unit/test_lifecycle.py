"""The transition table of spec/02-runs.md, every pair checked."""

from __future__ import annotations

import pytest

from apsis_common.errors import BadInput
from apsis_common.states import FINISHED, State
from apsis_server.core import lifecycle
from apsis_server.core.runs import Run

S = State
ALLOWED = {
    (S.NEW, S.SCHEDULED),
    (S.SCHEDULED, S.WAITING),
    (S.SCHEDULED, S.STARTING),
    (S.WAITING, S.STARTING),
    (S.STARTING, S.RUNNING),
    (S.RUNNING, S.STOPPING),
    (S.RUNNING, S.SUCCESS),
    (S.STOPPING, S.SUCCESS),
    (S.RUNNING, S.FAILURE),
    (S.STOPPING, S.FAILURE),
    (S.NEW, S.SKIPPED),
    (S.SCHEDULED, S.SKIPPED),
    (S.WAITING, S.SKIPPED),
    *((s, S.ERROR) for s in State if s not in FINISHED),
}


def _run(state: State) -> Run:
    return Run(run_id="r1", job_id="j", args={}, state=state, times={"new": 0.0})


@pytest.mark.parametrize("current", list(State))
@pytest.mark.parametrize("target", list(State))
def test_table(current: State, target: State) -> None:
    run = _run(current)
    if (current, target) in ALLOWED:
        new = lifecycle.transition(run, target, 5.0, "why")
        assert new.state == target and new.times[target.value] == 5.0 and new.message == "why"
        assert run.state == current  # the old value is untouched
    else:
        with pytest.raises(lifecycle.IllegalTransition):
            lifecycle.transition(run, target, 5.0, "why")


@pytest.mark.parametrize("current", list(State))
@pytest.mark.parametrize("target", list(State))
def test_mark(current: State, target: State) -> None:
    run = _run(current)
    if current in FINISHED and target in FINISHED and current != target:
        assert lifecycle.mark(run, target, 1.0, "by hand").state == target
    elif target not in FINISHED:  # bad input (400), whatever the run's state
        with pytest.raises(BadInput, match="mark takes a finished state"):
            lifecycle.mark(run, target, 1.0, "by hand")
    else:  # the run's state forbids it (409)
        with pytest.raises(lifecycle.IllegalTransition):
            lifecycle.mark(run, target, 1.0, "by hand")
