"""The process table: which unfinished run owns each proc id, and what is known of
that run's process.

A run handed to an agent gets a proc id (`<run id>.<attempt>.<random>`: who knows
a run id cannot guess its process's, `new_proc_id`), and a new one when it is
started again; agents' events name the proc id and `run_for` finds the run.
Beside it the table keeps how much of the run's output is stored, per stream and
merged (so a repeated or skipped piece is recognised, and a new one placed), and
its stop context (from which an exit's outcome is judged). The starter registers
a run here as it hands it to an agent, the engine as it starts one again or
adopts one after a restart; the engine forgets it when the run finishes, and
still writes the output itself.
"""

from __future__ import annotations

import secrets

from apsis_common import protocol as p
from apsis_server.core.bound import BoundNoOp, BoundProcess
from apsis_server.core.outcomes import StopContext
from apsis_server.core.runs import Run
from apsis_server.store.base import STDOUT

# Output stored so far: the end of stdout, of stderr, and of the merged view.
Lengths = tuple[int, int, int]
NO_OUTPUT: Lengths = (0, 0, 0)


def new_proc_id(run_id: str, attempt: int) -> str:
    """A proc id for a run's attempt: its run id and attempt (for people reading an
    agent's `procs/`), and 64 random bits no one can guess from them."""
    return f"{run_id}.{attempt}.{secrets.token_urlsafe(8)}"


class ProcTable:
    """Owns, per unfinished run: its proc id, its stored output length, its stop
    context, and when its process started by the agent's clock."""

    def __init__(self) -> None:
        self._by_proc: dict[str, str] = {}
        self._output_len: dict[str, Lengths] = {}
        self._stop: dict[str, StopContext] = {}
        self._started: dict[str, float] = {}

    def run_for(self, proc_id: str) -> str | None:
        """The id of the unfinished run that owns a proc id."""
        return self._by_proc.get(proc_id)

    # -- what the engine tells -------------------------------------------------

    def add(
        self,
        run_id: str,
        proc_id: str,
        output: Lengths = NO_OUTPUT,
        stop: StopContext | None = None,
    ) -> None:
        """A run has a process: just started, or adopted after a restart with the
        output already stored and its stop context."""
        self._by_proc[proc_id] = run_id
        self._output_len[run_id] = output
        self._stop[run_id] = stop or StopContext()

    def moved(self, run_id: str, old: str | None, new: str) -> None:
        """A run's process is started again under a new proc id."""
        if old is not None:
            self._by_proc.pop(old, None)
        self._by_proc[new] = run_id

    def forget(self, run: Run) -> None:
        """A run has finished: nothing of its process is kept."""
        if run.proc_id is not None:
            self._by_proc.pop(run.proc_id, None)
        self._output_len.pop(run.run_id, None)
        self._stop.pop(run.run_id, None)
        self._started.pop(run.run_id, None)

    def started(self, run_id: str, start_time: float) -> None:
        """The agent says the process started at `start_time` (its clock)."""
        self._started[run_id] = start_time

    def start_time(self, run_id: str) -> float | None:
        """When the process started by the agent's clock, if known since this start
        of the server (else the caller reads the run's meta)."""
        return self._started.get(run_id)

    # -- output and stop ---------------------------------------------------------

    def output_length(self, run_id: str, stream: int = STDOUT) -> int:
        """How many bytes of a running run's stream are stored (or about to be)."""
        return self._output_len.get(run_id, NO_OUTPUT)[0 if stream == STDOUT else 1]

    def merged_length(self, run_id: str) -> int:
        """Where the next output goes in the run's merged view."""
        return self._output_len.get(run_id, NO_OUTPUT)[2]

    def stored(self, run_id: str, stream: int, end: int, merged_end: int) -> None:
        """A stream's output up to `end` is stored (or about to be), the merged view
        up to `merged_end`."""
        out, err, _ = self._output_len.get(run_id, NO_OUTPUT)
        ends = (end, err) if stream == STDOUT else (out, end)
        self._output_len[run_id] = (*ends, merged_end)

    def stop_context(self, run_id: str) -> StopContext:
        """What the server asked of a run's process so far, to judge how it ended."""
        return self._stop.get(run_id, StopContext())

    def set_stop_context(self, run_id: str, ctx: StopContext) -> None:
        """What an agent reported of the stop (a timeout, an escalation)."""
        self._stop[run_id] = ctx

    def stop_requested(self, run_id: str) -> None:
        """A stop was asked for: the exit that follows is judged as stopped."""
        ctx = self.stop_context(run_id)
        self._stop[run_id] = StopContext(True, ctx.stop_signal, ctx.timed_out, ctx.escalated)


def is_noop(run: Run) -> bool:
    """Whether a run's program is a no-op: it has no process."""
    return isinstance(run.program, BoundNoOp)


def proc_spec(run: Run, program: BoundProcess) -> p.ProcSpec:
    """The agent's view of a bound process program."""
    timeout, limits = program.timeout, program.resources
    return p.ProcSpec(
        argv=program.argv,
        cwd=program.cwd,
        env_inherit=program.env_inherit,
        env=dict(program.env),
        stop=p.StopSpec(program.stop_signal, program.stop_grace),
        timeout=p.TimeoutSpec(timeout.duration, timeout.signal) if timeout else None,
        output_max=program.output_max,
        labels={"run_id": run.run_id, "job_id": run.job_id},
        resources=None if limits is None else p.Resources(limits.memory, limits.cpu, limits.pids),
        # Another user's agent (through sudo or ssh): programs get that user's login
        # environment, not the session's that started the agent.
        login_env=(run.agent_id or "").startswith(("sudo:", "ssh:")),
        stderr=program.stderr,
    )
