"""The operator's operations on one run: start, skip, stop, signal, mark, rerun, error.

Each checks the run's state (409 `Conflict` if the operation does not apply),
asks the engine to apply the change through its public methods, commits, and
answers the run as it is now.
"""

from __future__ import annotations

import signal

from apsis_common import protocol as p
from apsis_common.errors import Conflict
from apsis_common.states import FINISHED, State
from apsis_server.agents.dispatch import Command, CommandKind
from apsis_server.core import lifecycle
from apsis_server.core.jobs import ADHOC_JOB
from apsis_server.core.outcomes import signal_name
from apsis_server.core.runs import Run
from apsis_server.engine.engine import Engine


class Operations:
    """What an operator may do to a run, by run id."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _unfinished(self, run_id: str, *states: State) -> Run:
        run = self.engine.get(run_id)
        if run.state not in states:
            names = ", ".join(s.value for s in states)
            raise Conflict(f"run {run_id} is {run.state}; this needs it {names}")
        return run

    def start(self, run_id: str) -> Run:
        """Start now, ignoring the schedule time and conditions."""
        engine = self.engine
        run = self._unfinished(run_id, State.SCHEDULED, State.WAITING)
        engine.start(run, "started by hand")
        engine.commit()
        return engine.get(run_id)

    def skip(self, run_id: str) -> Run:
        """Skip a scheduled or waiting run: it finishes as `skipped`."""
        run = self._unfinished(run_id, State.SCHEDULED, State.WAITING)
        self.engine.apply(run, lifecycle.Skipped("skipped by hand"))
        self.engine.commit()
        return self.engine.get(run_id)

    def stop(self, run_id: str) -> Run:
        """Stop a running run: the stop signal, the grace period, then SIGKILL."""
        engine = self.engine
        run = self._unfinished(run_id, State.RUNNING)
        engine.apply(run, lifecycle.StopRequested())
        engine.commit()
        return engine.get(run_id)

    def signal(self, run_id: str, signal: int) -> Run:
        """Send a signal to a running or stopping run's process (the state stays)."""
        engine = self.engine
        run = self._unfinished(run_id, State.RUNNING, State.STOPPING)
        engine.note(run_id, f"sending {signal_name(signal)} by hand")
        if run.agent_id is not None and run.proc_id is not None:
            engine.send(run.agent_id, Command(CommandKind.SIGNAL, run.proc_id, signal=signal))
        engine.commit()
        return run

    def kill(self, run_id: str) -> Run:
        """Send SIGKILL to a running or stopping run's process."""
        return self.signal(run_id, 9)

    def mark(self, run_id: str, state: State, message: str | None = None) -> Run:
        """Set a run's state by hand, as the lifecycle allows marking."""
        run = self.engine.apply(self.engine.get(run_id), lifecycle.marked(state, message))
        self.engine.commit()
        return run

    def rerun(self, run_id: str) -> Run:
        """A new run of a finished run's job, with the same args, due now."""
        run = self.engine.get(run_id)
        if run.state not in FINISHED:
            raise Conflict(f"run {run_id} is {run.state}; only a finished run can be rerun")
        if run.job_id == ADHOC_JOB:
            raise Conflict(
                f"run {run_id} ran a program given directly, which is not kept as a job:"
                " schedule the program again"
            )
        return self.engine.schedule(run.job_id, run.args, rerun_of=run_id)

    def force_error(self, run_id: str, message: str) -> Run:
        """Put an unfinished run in `error` with `message`; a process it has on an
        agent is killed (SIGKILL to its group), so none is left running unwatched."""
        engine = self.engine
        run = engine.get(run_id)
        if run.state in FINISHED:
            raise Conflict(f"run {run_id} is {run.state}; it has already finished")
        started = run.state in (State.STARTING, State.RUNNING, State.STOPPING)
        if started and run.agent_id is not None and run.proc_id is not None:
            engine.note(run_id, "killing its process (SIGKILL), as the run is put in error")
            stop = p.StopRequest(signal=int(signal.SIGKILL), grace=0.0)
            engine.send(run.agent_id, Command(CommandKind.STOP, run.proc_id, stop))
        engine.error_run(run_id, lifecycle.ErrorByHand(message))
        engine.commit()
        return engine.get(run_id)
