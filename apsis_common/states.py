"""Run states: the names every component uses for where a run is."""

from __future__ import annotations

import enum


class State(enum.StrEnum):
    """The state of a run (spec/02-runs.md)."""

    NEW = "new"
    SCHEDULED = "scheduled"
    WAITING = "waiting"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    SUCCESS = "success"
    FAILURE = "failure"
    ERROR = "error"
    SKIPPED = "skipped"

    @property
    def finished(self) -> bool:
        return self in FINISHED


FINISHED: frozenset[State] = frozenset({State.SUCCESS, State.FAILURE, State.ERROR, State.SKIPPED})
UNFINISHED: frozenset[State] = frozenset(State) - FINISHED
