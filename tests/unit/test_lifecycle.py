"""The run lifecycle: the (state, event) table checked over every pair, the
transitions of spec/02-runs.md it allows and no others, and the effects it returns."""

from __future__ import annotations

import signal

import pytest

from apsis_common.errors import BadInput
from apsis_common.states import FINISHED, UNFINISHED, State
from apsis_server.core import lifecycle as lc
from apsis_server.core.bound import BoundProcess
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
PROGRAM = BoundProcess(("true",), stop_signal=signal.SIGTERM, stop_grace=1.0)
# One event of every kind, and where the table takes a run in each state it accepts.
EVENTS: list[tuple[lc.Event, dict[State, State]]] = [
    (lc.Scheduled("scheduled"), {S.NEW: S.SCHEDULED}),
    (lc.Due(PROGRAM), {S.SCHEDULED: S.WAITING}),
    (lc.Invalid("template failed"), {S.SCHEDULED: S.ERROR, S.WAITING: S.ERROR}),
    (
        lc.StartHanded(PROGRAM, "conditions met", "local", "r1.1", 1),
        {
            S.SCHEDULED: S.STARTING,
            S.WAITING: S.STARTING,
        },
    ),
    (lc.Restarted("r1.2", 2, "agent stopped during start"), {S.STARTING: S.STARTING}),
    (lc.Started("running as pid 7"), {S.STARTING: S.RUNNING}),
    (lc.StartRefused("no such file"), {S.STARTING: S.ERROR}),
    (lc.Succeeded("exited 0"), {S.RUNNING: S.SUCCESS, S.STOPPING: S.SUCCESS}),
    (lc.Failed("exited 1"), {S.RUNNING: S.FAILURE, S.STOPPING: S.FAILURE}),
    (lc.StopRequested(), {S.RUNNING: S.STOPPING}),
    (lc.StopTimeReached(), {S.RUNNING: S.STOPPING}),
    (lc.TimedOut(), {S.RUNNING: S.STOPPING}),
    (lc.ProcLost("shim vanished"), dict.fromkeys(lc.ACTIVE, S.ERROR)),
    (lc.AgentLost("local", 600.0), dict.fromkeys(lc.ACTIVE, S.ERROR)),
    (
        lc.Skipped("skipped by hand"),
        {S.NEW: S.SKIPPED, S.SCHEDULED: S.SKIPPED, S.WAITING: S.SKIPPED},
    ),
    (lc.ConditionFailed("no run of a is success"), {S.WAITING: S.ERROR}),
    (lc.WaitedTooLong(61.0), {S.WAITING: S.ERROR}),
    (lc.ErrorByHand("wedged"), dict.fromkeys(UNFINISHED, S.ERROR)),
    (lc.InternalError(), dict.fromkeys(UNFINISHED, S.ERROR)),
    *[(lc.marked(to), {s: to for s in FINISHED if s != to}) for to in FINISHED],
]


def _run(state: State, agent_id: str | None = None, proc_id: str | None = None) -> Run:
    return Run("r1", "j", {}, state, times={"new": 0.0}, agent_id=agent_id, proc_id=proc_id)


def test_every_event_kind_is_covered() -> None:
    kinds = {type(event) for event, _ in EVENTS}
    assert kinds == {event for _, event in lc.TABLE}


@pytest.mark.parametrize(("event", "moves"), EVENTS, ids=[type(e).__name__ for e, _ in EVENTS])
@pytest.mark.parametrize("current", list(State))
def test_table(event: lc.Event, moves: dict[State, State], current: State) -> None:
    """Every (state, event) pair: the new state and message, or IllegalTransition with
    the run untouched (runs are values)."""
    run = _run(current)
    expected = moves.get(current)
    if expected is None:
        with pytest.raises(lc.IllegalTransition):
            lc.apply(run, event, 5.0)
        return
    new = lc.apply(run, event, 5.0).run
    assert new.state == expected and new.message == event.message
    if expected != current:
        assert new.times[expected.value] == 5.0
    assert run.state == current and run.times == {"new": 0.0}


def test_the_table_allows_exactly_the_spec_transitions() -> None:
    """spec/02-runs.md's "Allowed transitions", marks aside, and nothing else."""
    moves = {
        (state, to)
        for (state, event), to in lc.TABLE.items()
        if state != to and not issubclass(event, lc.Marked)
    }
    assert moves == ALLOWED
    assert {(src, dst) for dst, srcs in lc.SOURCES.items() for src in srcs} == ALLOWED


@pytest.mark.parametrize("current", list(State))
@pytest.mark.parametrize("target", list(State))
def test_mark(current: State, target: State) -> None:
    run = _run(current)
    if current in FINISHED and target in FINISHED and current != target:
        assert lc.apply(run, lc.marked(target, "by hand"), 1.0).run.state == target
    elif target not in FINISHED:  # bad input (400), whatever the run's state
        with pytest.raises(BadInput, match="mark takes a finished state"):
            lc.apply(run, lc.marked(target, "by hand"), 1.0)
    else:  # the run's state forbids it (409)
        with pytest.raises(lc.IllegalTransition):
            lc.apply(run, lc.marked(target, "by hand"), 1.0)


def test_events_carry_their_fields() -> None:
    handed = lc.apply(_run(S.WAITING), lc.StartHanded(PROGRAM, "go", "local", "r1.1", 1), 2.0)
    assert (handed.run.agent_id, handed.run.proc_id, handed.run.attempt) == ("local", "r1.1", 1)
    assert handed.run.program == PROGRAM
    again = lc.apply(handed.run, lc.Restarted("r1.2", 2, "agent stopped during start"), 3.0)
    assert (again.run.proc_id, again.run.attempt) == ("r1.2", 2)
    assert again.run.times == handed.run.times  # the same state, not entered again
    assert again.run.message == "agent stopped during start; starting again"
    stopping = lc.apply(_run(S.RUNNING), lc.StopRequested(), 9.0).run
    assert stopping.stop_time == 9.0
    due = lc.apply(_run(S.SCHEDULED), lc.Due(PROGRAM), 1.0).run
    assert due.program == PROGRAM


@pytest.mark.parametrize(
    ("run", "event", "effects"),
    [
        (_run(S.NEW), lc.Scheduled(), [lc.EnteredScheduled()]),
        (_run(S.SCHEDULED), lc.Due(PROGRAM), [lc.LeftScheduled(), lc.CheckConditions()]),
        (_run(S.SCHEDULED), lc.Skipped("x"), [lc.LeftScheduled(), lc.Finished()]),
        (_run(S.RUNNING), lc.StopRequested(), [lc.SendStop()]),
        (_run(S.RUNNING), lc.StopTimeReached(), [lc.SendStop()]),
        (_run(S.RUNNING), lc.TimedOut(), []),  # the agent is stopping it already
        (
            _run(S.STARTING, agent_id="local", proc_id="r1.1"),
            lc.ErrorByHand("wedged"),
            [lc.WithdrawStart("local", "r1.1"), lc.Finished()],
        ),
        (_run(S.RUNNING, agent_id="local", proc_id="r1.1"), lc.Failed("1"), [lc.Finished()]),
        # Started: a start still queued for its agent (resent after a restart) must
        # not go, or a program that already ran and was forgotten would run again.
        (
            _run(S.STARTING, agent_id="local", proc_id="r1.1"),
            lc.Started("pid 7"),
            [lc.WithdrawStart("local", "r1.1")],
        ),
        (_run(S.SUCCESS), lc.marked(S.FAILURE), []),  # actions fire once, not on a mark
    ],
)
def test_effects(run: Run, event: lc.Event, effects: list[lc.Effect]) -> None:
    assert list(lc.apply(run, event, 1.0).effects) == effects
