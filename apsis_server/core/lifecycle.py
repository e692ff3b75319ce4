"""Every run transition: the events that move runs, the table, and `apply`.

Theory of operation
-------------------
A run changes state only because something happened to it, and each such thing is
an event: a frozen dataclass that says why (its schedule time came, its start was
handed to an agent, the agent refused it, its process exited, its stop time came,
its agent was lost, an operator marked it...). `TABLE` is the transition table of
spec/02-runs.md as data, keyed by (state, event type) → new state, as h11 keys its
own. `apply` looks the pair up and returns the new run value — the state, the time
it was entered, the event's message and the fields the event carries — with the
effects the engine must carry out, as values. A pair the table lacks raises
`IllegalTransition` and changes nothing (runs are immutable values).

Marking a finished run as another finished state is an operator's explicit event
(`Marked`, one per target state), never a bypass of the table.

This module is the only code that puts a run in a new state: the engine applies
events through `apply` and writes what it returns; nothing else sets `state` (a
test checks the source tree for that). Nothing here does I/O or reads the clock.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from apsis_common.errors import BadInput, Conflict
from apsis_common.states import FINISHED, UNFINISHED, State
from apsis_server.core.bound import BoundProgram
from apsis_server.core.runs import Run

S = State
Program = BoundProgram


class IllegalTransition(Conflict):
    """The table has no transition for this event in the run's state."""


# -- events --------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """Something that happened to a run; `message` says it for the run's log."""

    @property
    def message(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True)
class Scheduled(Event):
    """A new run is planned from a schedule, or made by hand, an action or a rerun."""

    why: str = "scheduled"

    @property
    def message(self) -> str:
        return self.why


@dataclass(frozen=True)
class Due(Event):
    """Its schedule time came; its program is bound now (errors surface now)."""

    program: Program

    @property
    def message(self) -> str:
        return "schedule time reached"


@dataclass(frozen=True)
class Invalid(Event):
    """It cannot run as defined: a template failed, its job is gone, no agent can
    take its program (which is kept, when bound, to show what was tried)."""

    reason: str
    program: Program | None = None

    @property
    def message(self) -> str:
        return self.reason


@dataclass(frozen=True)
class StartHanded(Event):
    """Its program was handed to where it runs: an agent (under a proc id), or the
    server itself (a no-op or an internal program: no agent, no proc id)."""

    program: Program
    why: str
    agent_id: str | None = None
    proc_id: str | None = None
    attempt: int = 0

    @property
    def message(self) -> str:
        return self.why


@dataclass(frozen=True)
class Restarted(Event):
    """Its start is asked for again under a new proc id: the agent could not vouch
    that the previous one started."""

    proc_id: str
    attempt: int
    why: str

    @property
    def message(self) -> str:
        return f"{self.why}; starting again"


@dataclass(frozen=True)
class Started(Event):
    """Its program started: the agent reports a pid, or it runs in the server."""

    how: str

    @property
    def message(self) -> str:
        return self.how


@dataclass(frozen=True)
class StartRefused(Event):
    """The agent refused its start, or the start failed there, or cannot be sent."""

    error: str

    @property
    def message(self) -> str:
        return self.error


@dataclass(frozen=True)
class Succeeded(Event):
    """Its program ended well (exit 0, stopped as asked, a no-op, an internal run)."""

    how: str

    @property
    def message(self) -> str:
        return self.how


@dataclass(frozen=True)
class Failed(Event):
    """Its program ended badly (non-zero exit, killed, timed out)."""

    how: str

    @property
    def message(self) -> str:
        return self.how


@dataclass(frozen=True)
class StopRequested(Event):
    """An operator asked it to stop."""

    @property
    def message(self) -> str:
        return "stop requested"


@dataclass(frozen=True)
class StopTimeReached(Event):
    """Its stop time (a stop schedule) came."""

    @property
    def message(self) -> str:
        return "stop time reached"


@dataclass(frozen=True)
class TimedOut(Event):
    """Its agent signalled it at its timeout: it is being stopped there."""

    @property
    def message(self) -> str:
        return "timed out"


@dataclass(frozen=True)
class ProcLost(Event):
    """Its process is gone without an exit status (its supervisor died, or the agent
    knows no such process)."""

    reason: str

    @property
    def message(self) -> str:
        return self.reason


@dataclass(frozen=True)
class AgentLost(Event):
    """Its agent was unreachable past the lost timeout."""

    agent_id: str
    silence: float

    @property
    def message(self) -> str:
        return f"agent {self.agent_id} unreachable for {self.silence:.0f}s"


@dataclass(frozen=True)
class Skipped(Event):
    """It will not run: skipped by hand, missed while the server was down, or a
    condition found a duplicate."""

    why: str

    @property
    def message(self) -> str:
        return self.why


@dataclass(frozen=True)
class ConditionFailed(Event):
    """A condition says it can never start (or a condition's template failed)."""

    reason: str

    @property
    def message(self) -> str:
        return self.reason


@dataclass(frozen=True)
class WaitedTooLong(Event):
    """It waited for its conditions past its waiting limit."""

    seconds: float

    @property
    def message(self) -> str:
        return f"waited too long ({self.seconds:.0f}s)"


@dataclass(frozen=True)
class ErrorByHand(Event):
    """An operator put it in error (the escape hatch for a wedged run)."""

    why: str

    @property
    def message(self) -> str:
        return self.why


@dataclass(frozen=True)
class InternalError(Event):
    """The server failed while handling it (see the server log)."""

    why: str = "internal error; see the server log"

    @property
    def message(self) -> str:
        return self.why


@dataclass(frozen=True)
class Marked(Event):
    """An operator marked a finished run as another finished state (`marked(...)`)."""

    to: ClassVar[State]
    why: str | None = None

    @property
    def message(self) -> str:
        return self.why or f"marked {self.to} by hand"


@dataclass(frozen=True)
class MarkedSuccess(Marked):
    """An operator marked a finished run a success."""

    to: ClassVar[State] = S.SUCCESS


@dataclass(frozen=True)
class MarkedFailure(Marked):
    """An operator marked a finished run a failure."""

    to: ClassVar[State] = S.FAILURE


@dataclass(frozen=True)
class MarkedError(Marked):
    """An operator marked a finished run in error."""

    to: ClassVar[State] = S.ERROR


@dataclass(frozen=True)
class MarkedSkipped(Marked):
    """An operator marked a finished run skipped."""

    to: ClassVar[State] = S.SKIPPED


MARKS: Mapping[State, type[Marked]] = {
    cls.to: cls for cls in (MarkedSuccess, MarkedFailure, MarkedError, MarkedSkipped)
}


def marked(to: State, why: str | None = None) -> Marked:
    """The event of marking a run `to` by hand; BadInput unless `to` is finished."""
    if to not in FINISHED:
        raise BadInput(f"cannot mark a run {to}; mark takes a finished state")
    return MARKS[to](why)


# -- the table -----------------------------------------------------------------------


def _from(states: frozenset[State] | set[State], event: type[Event], to: State) -> dict[Any, State]:
    return {(state, event): to for state in states}


ACTIVE = frozenset({S.STARTING, S.RUNNING, S.STOPPING})
NOT_STARTED = frozenset({S.SCHEDULED, S.WAITING})

TABLE: Mapping[tuple[State, type[Event]], State] = {
    (S.NEW, Scheduled): S.SCHEDULED,
    (S.SCHEDULED, Due): S.WAITING,
    **_from(NOT_STARTED, Invalid, S.ERROR),
    **_from(NOT_STARTED, StartHanded, S.STARTING),
    (S.STARTING, Restarted): S.STARTING,
    (S.STARTING, Started): S.RUNNING,
    (S.STARTING, StartRefused): S.ERROR,
    **_from({S.RUNNING, S.STOPPING}, Succeeded, S.SUCCESS),
    **_from({S.RUNNING, S.STOPPING}, Failed, S.FAILURE),
    (S.RUNNING, StopRequested): S.STOPPING,
    (S.RUNNING, StopTimeReached): S.STOPPING,
    (S.RUNNING, TimedOut): S.STOPPING,
    **_from(ACTIVE, ProcLost, S.ERROR),
    **_from(ACTIVE, AgentLost, S.ERROR),
    **_from({S.NEW, *NOT_STARTED}, Skipped, S.SKIPPED),
    (S.WAITING, ConditionFailed): S.ERROR,
    (S.WAITING, WaitedTooLong): S.ERROR,
    **_from(UNFINISHED, ErrorByHand, S.ERROR),
    **_from(UNFINISHED, InternalError, S.ERROR),
    **{(state, cls): to for to, cls in MARKS.items() for state in FINISHED if state != to},
}


def _sources() -> dict[State, frozenset[State]]:
    found: dict[State, set[State]] = {state: set() for state in State}
    for (state, event), to in TABLE.items():
        if state != to and not issubclass(event, Marked):
            found[to].add(state)
    return {state: frozenset(states) for state, states in found.items()}


# For each state, the states a run may enter it from (marks aside): spec/02-runs.md's
# "Allowed transitions (to ← from)", as the table above gives them.
SOURCES: Mapping[State, frozenset[State]] = _sources()


def table_markdown() -> str:
    """The table as a Markdown table, one row per event (docs/architecture.md)."""
    rows = ["| event | why | from → to |", "|---|---|---|"]
    events: dict[type[Event], dict[State, list[State]]] = {}
    for (state, event), to in TABLE.items():
        events.setdefault(event, {}).setdefault(to, []).append(state)
    for event, moves in events.items():
        why = (event.__doc__ or "").split("\n\n")[0].replace("\n", " ")
        why = " ".join(why.split())
        where = "; ".join(
            f"{', '.join(s.value for s in State if s in froms)} → {to.value}"
            for to, froms in moves.items()
        )
        rows.append(f"| `{event.__name__}` | {why} | {where} |")
    return "\n".join(rows) + "\n"


# -- effects ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Effect:
    """What the engine must do because of a transition, besides writing the run."""


@dataclass(frozen=True)
class EnteredScheduled(Effect):
    """One more scheduled run of its schedule; arm its due (and stop) timers."""


@dataclass(frozen=True)
class LeftScheduled(Effect):
    """One fewer scheduled run of its schedule: planning may plan another."""


@dataclass(frozen=True)
class CheckConditions(Effect):
    """It waits now: check its conditions, and arm its waiting limit."""


@dataclass(frozen=True)
class SendStop(Effect):
    """Ask its process to stop (the stop signal, the grace period, SIGKILL)."""


@dataclass(frozen=True)
class WithdrawStart(Effect):
    """It left `starting` (started, or ended before its agent took its start): a
    start still queued for its agent must not go."""

    agent_id: str
    proc_id: str


@dataclass(frozen=True)
class Finished(Effect):
    """It has just finished: fire its actions, forget its process, answer waiters."""


@dataclass(frozen=True)
class Transition:
    """The run after an event, and the effects to carry out."""

    run: Run
    effects: tuple[Effect, ...]


def apply(run: Run, event: Event, time: float) -> Transition:
    """The run after `event` at `time`, and the effects; IllegalTransition if the
    table has no (state, event) pair for it."""
    to = TABLE.get((run.state, type(event)))
    if to is None:
        raise IllegalTransition(
            f"run {run.run_id} is {run.state}; {type(event).__name__} does not apply"
            if not isinstance(event, Marked)
            else f"run {run.run_id} is {run.state}; it cannot be marked {event.to}"
        )
    new = dataclasses.replace(
        run,
        state=to,
        times=run.times if to == run.state else {**run.times, to.value: time},
        message=event.message,
        **_carried(event, time),
    )
    return Transition(new, _effects(run, new, event))


def _carried(event: Event, time: float) -> dict[str, Any]:
    """The run fields an event sets besides its state."""
    if isinstance(event, Due):
        return {"program": event.program}
    if isinstance(event, Invalid) and event.program is not None:
        return {"program": event.program}
    if isinstance(event, StartHanded):
        return {
            "program": event.program,
            "agent_id": event.agent_id,
            "proc_id": event.proc_id,
            "attempt": event.attempt,
        }
    if isinstance(event, Restarted):
        return {"proc_id": event.proc_id, "attempt": event.attempt}
    if isinstance(event, StopRequested | StopTimeReached | TimedOut):
        return {"stop_time": time}
    return {}


def _effects(old: Run, new: Run, event: Event) -> tuple[Effect, ...]:
    effects: list[Effect] = []
    if new.state == S.SCHEDULED and old.state != S.SCHEDULED:
        effects.append(EnteredScheduled())
    if old.state == S.SCHEDULED and new.state != S.SCHEDULED:
        effects.append(LeftScheduled())
    if new.state == S.WAITING:
        effects.append(CheckConditions())
    if isinstance(event, StopRequested | StopTimeReached):
        effects.append(SendStop())
    if old.state == S.STARTING and new.state != S.STARTING and old.agent_id and old.proc_id:
        # A start still waiting to be (re)sent — say, resent after a restart to an
        # agent not yet reconnected — must not reach the agent once the run has left
        # `starting`: had the program already run and been forgotten, it would run again.
        effects.append(WithdrawStart(old.agent_id, old.proc_id))
    if new.state in FINISHED and old.state not in FINISHED:
        effects.append(Finished())
    return tuple(effects)
