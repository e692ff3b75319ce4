"""The stop rules: how a process's end becomes a finished state."""

from __future__ import annotations

import signal

import pytest

from apsis_common.protocol import ExitInfo
from apsis_common.states import State
from apsis_server.core.outcomes import StopContext, outcome

TERM, KILL, INT = int(signal.SIGTERM), int(signal.SIGKILL), int(signal.SIGINT)


def _exit(code: int | None, sig: int | None = None) -> ExitInfo:
    return ExitInfo(0, code, sig, False, {}, 0.0)


@pytest.mark.parametrize(
    ("exit", "ctx", "state", "text"),
    [
        (_exit(0), StopContext(), State.SUCCESS, "exited 0"),
        (_exit(7), StopContext(), State.FAILURE, "exited 7"),
        (_exit(None, TERM), StopContext(), State.FAILURE, "killed by SIGTERM"),
        (_exit(None, TERM), StopContext(stop_requested=True), State.SUCCESS, "stopped"),
        (_exit(None, INT), StopContext(True, INT), State.SUCCESS, "SIGINT"),
        (_exit(None, TERM), StopContext(True, INT), State.FAILURE, "SIGTERM"),
        (_exit(None, KILL), StopContext(True, TERM, escalated=True), State.FAILURE, "grace"),
        (_exit(0), StopContext(True, TERM, timed_out=True), State.FAILURE, "timed out"),
        (_exit(None, TERM), StopContext(True, TERM, timed_out=True), State.FAILURE, "timed out"),
        (_exit(3), StopContext(stop_requested=True), State.FAILURE, "exited 3"),
    ],
)
def test_outcome(exit: ExitInfo, ctx: StopContext, state: State, text: str) -> None:
    got, message = outcome(exit, ctx)
    assert got == state and text in message
