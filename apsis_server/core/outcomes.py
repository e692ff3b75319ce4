"""How a process's end becomes a run's finished state (the stop rules)."""

from __future__ import annotations

import signal as _signal
from dataclasses import dataclass

from apsis_common.protocol import ExitInfo
from apsis_common.states import State


def signal_name(number: int) -> str:
    try:
        return _signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


@dataclass(frozen=True)
class StopContext:
    """What the server asked of the process before it ended."""

    stop_requested: bool = False
    stop_signal: int = int(_signal.SIGTERM)
    timed_out: bool = False
    escalated: bool = False


def outcome(exit: ExitInfo, ctx: StopContext) -> tuple[State, str]:
    """The finished state and the reason, for a process that exited.

    - exit code 0 → success;
    - a run that timed out → failure, whatever the exit;
    - after a requested stop, ending by the stop signal → success; being killed
      by SIGKILL after the grace period → failure;
    - any other non-zero exit or signal → failure.
    """
    if exit.signal is not None:
        how = f"killed by {signal_name(exit.signal)}" + (" (core dumped)" if exit.core_dump else "")
    else:
        how = f"exited {exit.exit_code}"
    if ctx.timed_out:
        return State.FAILURE, f"timed out; {how}"
    if exit.exit_code == 0:
        return State.SUCCESS, how
    if ctx.stop_requested:
        if exit.signal == ctx.stop_signal:
            return State.SUCCESS, f"stopped; {how}"
        if ctx.escalated or exit.signal == _signal.SIGKILL:
            return State.FAILURE, f"did not stop within the grace period; {how}"
    return State.FAILURE, how
