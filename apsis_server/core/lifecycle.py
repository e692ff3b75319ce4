"""Every run transition, and the only code that puts a run in a new state.

Theory of operation
-------------------
A run moves through the states of spec/02-runs.md. `TRANSITIONS` is the table,
as data: for each target state, the states it may be entered from. `transition`
checks the table and returns a new `Run` value with the state, the time the state
was entered and the reason; an illegal transition raises `IllegalTransition` and
changes nothing (the old value is untouched, since runs are immutable).

Marking a finished run as another finished state is a separate rule (`mark`), not
a bypass of the table: only an operator does it, and only between finished states.

The engine is the one caller: it applies the returned value to the store, the
feeds and the agents. Nothing here does I/O or reads the clock.
"""

from __future__ import annotations

from typing import Any

from apsis_common.errors import BadInput, Conflict
from apsis_common.states import FINISHED, UNFINISHED, State
from apsis_server.core.runs import Run

S = State

TRANSITIONS: dict[State, frozenset[State]] = {
    S.SCHEDULED: frozenset({S.NEW}),
    S.WAITING: frozenset({S.SCHEDULED}),
    S.STARTING: frozenset({S.SCHEDULED, S.WAITING}),
    S.RUNNING: frozenset({S.STARTING}),
    S.STOPPING: frozenset({S.RUNNING}),
    S.SUCCESS: frozenset({S.RUNNING, S.STOPPING}),
    S.FAILURE: frozenset({S.RUNNING, S.STOPPING}),
    S.SKIPPED: frozenset({S.NEW, S.SCHEDULED, S.WAITING}),
    S.ERROR: UNFINISHED,
    S.NEW: frozenset(),
}


class IllegalTransition(Conflict):
    """The table does not allow this transition."""


def allowed(current: State, target: State) -> bool:
    """Whether the table allows `current → target`."""
    return current in TRANSITIONS[target]


def transition(run: Run, to: State, time: float, message: str | None, **changes: Any) -> Run:
    """The run in state `to`, entered at `time` for `message`; raises if not allowed."""
    if not allowed(run.state, to):
        raise IllegalTransition(f"run {run.run_id} is {run.state}; it cannot become {to}")
    times = {**run.times, to.value: time}
    return run.replace(state=to, times=times, message=message, **changes)


def mark(run: Run, to: State, time: float, message: str) -> Run:
    """An operator's re-marking of a finished run as another finished state."""
    if to not in FINISHED:  # bad input whatever the run's state
        raise BadInput(f"cannot mark a run {to}; mark takes a finished state")
    if run.state not in FINISHED:
        raise IllegalTransition(
            f"run {run.run_id} is {run.state}; only a finished run can be marked"
        )
    if to == run.state:
        raise IllegalTransition(f"run {run.run_id} is already {to}")
    times = {**run.times, to.value: time}
    return run.replace(state=to, times=times, message=message)
