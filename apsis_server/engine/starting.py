"""Starting runs: binding a run's program and handing it to where it runs.

A process program goes to the agent the registry chooses for its host and user,
under the proc id `<run id>.<attempt>`; the engine sends the start once the
change is committed, so the proc id is recorded before any agent hears of it. An
internal program runs in the server (housekeeping); a no-op runs nowhere and
finishes on a timer. A run whose job is gone, whose program does not bind or
which no agent can take, errors with the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from apsis_common.states import State
from apsis_server.core.outcomes import StopContext
from apsis_server.core.programs import BindError, bind
from apsis_server.core.runs import Run
from apsis_server.engine.procs import DEFAULT_OUTPUT_MAX

if TYPE_CHECKING:
    from apsis_server.engine.engine import Engine


class Starter:
    """Starts the runs the waiter or an operator hands it."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self.output_max = DEFAULT_OUTPUT_MAX
        # Runs internal (housekeeping) programs; set by whoever owns the store.
        self.internal: Callable[[Run], None] | None = None

    def bind(self, run: Run) -> dict[str, Any]:
        """The run's program: as bound when it left `scheduled`, or bound now from its
        job (whose conditions and actions the run then keeps); BindError says why it
        cannot be."""
        if run.program is not None:
            return dict(run.program)
        engine = self._engine
        job = engine.job_of(run)
        if job is None:
            raise BindError(f"job {run.job_id} no longer exists")
        scope = {**run.args, "args": run.args, "run_id": run.run_id, "job_id": run.job_id}
        program = bind(job.program, engine.templates, scope)
        engine.bound_jobs[run.run_id] = job  # its conditions and actions, too
        return program

    def start(self, run: Run, message: str = "starting") -> None:
        """Bind the run's program and hand it to an agent (or run a no-op)."""
        engine = self._engine
        try:
            program = self.bind(run)
        except BindError as exc:
            engine.transition(run, State.ERROR, str(exc))
            return
        if str(program["type"]).startswith("internal."):
            if self.internal is None:
                engine.transition(run, State.ERROR, f"{program['type']} needs the SQLite store")
                return
            run = engine.transition(run, State.STARTING, message, program=program)
            run = engine.transition(run, State.RUNNING, "running in the server")
            self.internal(run)
            return
        if program["type"] == "no-op":
            run = engine.transition(run, State.STARTING, message, program=program)
            run = engine.transition(run, State.RUNNING, "no-op running")
            engine.timers.add(
                engine.clock() + float(program.get("duration", 0.0)), run.run_id, "no-op"
            )
            return
        # Part of the bound program, so a start repeated after a restart is the same.
        program = {"output_max": self.output_max, **program}
        try:
            choice = engine.agents.choose(program.get("host"), program.get("user"))
        except (LookupError, ValueError) as exc:
            engine.transition(run, State.ERROR, str(exc), program=program)
            return
        attempt = run.attempt + 1
        proc_id = f"{run.run_id}.{attempt}"
        run = engine.transition(
            run,
            State.STARTING,
            message,
            program=program,
            proc_id=proc_id,
            agent_id=choice.agent_id,
            attempt=attempt,
        )
        for note in choice.notes:
            engine.note(run.run_id, note)
        stop = StopContext(stop_signal=int(program["stop"]["signal"]))
        engine.procs.add(run.run_id, proc_id, stop=stop)
        engine.resend_start(run)
