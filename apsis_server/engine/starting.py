"""Starting runs: binding a run's program and deciding where it runs.

A process program goes to the agent the registry chooses for its host and user,
under the proc id `<run id>.<attempt>`; the engine sends the start once the
change is committed, so the proc id is recorded before any agent hears of it. An
internal program runs in the server (housekeeping); a no-op runs nowhere and
finishes on a timer. A run whose job is gone, whose program does not bind or
which no agent can take, errors with the reason. The starter decides; the engine
applies what it decides.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from apsis_server.agents.choice import Choice
from apsis_server.core import lifecycle
from apsis_server.core.bound import BindError, BoundInternal, BoundNoOp, BoundProgram, bind
from apsis_server.core.jobs import Job
from apsis_server.core.runs import Run
from apsis_server.core.templates import Templates
from apsis_server.engine.procs import new_proc_id


class Jobs(Protocol):
    """What binding reads: the definition a run follows, and the templates."""

    def job_of(self, run: Run) -> Job | None: ...

    @property
    def templates(self) -> Templates: ...


class Chooser(Protocol):
    """Where a process program runs: the agent for its host and user."""

    def choose(
        self, host: str | None, user: str | None, busy: Callable[[], Mapping[str, int]]
    ) -> Choice:
        """The agent, with notes for the run log; LookupError or ValueError if none."""


@dataclass(frozen=True)
class Bound:
    """A run's program, bound, and the job whose conditions and actions it keeps
    (None when it was bound before, when it left `scheduled`)."""

    program: BoundProgram
    job: Job | None


@dataclass(frozen=True)
class ToAgent:
    """Hand the start to an agent (`event`), with notes for the run log."""

    event: lifecycle.StartHanded
    notes: tuple[str, ...] = ()
    job: Job | None = None


@dataclass(frozen=True)
class InServer:
    """Run it in the server: a no-op (finished by a timer) or an internal program."""

    event: lifecycle.StartHanded
    noop: bool
    job: Job | None = None
    duration: float = 0.0


@dataclass(frozen=True)
class Refused:
    """It cannot start: the event says why."""

    event: lifecycle.Invalid
    job: Job | None = field(default=None)


Decision = ToAgent | InServer | Refused


class Starter:
    """Decides how runs start."""

    def __init__(
        self,
        jobs: Jobs,
        agents: Chooser,
        busy: Callable[[], Mapping[str, int]],
        output_max: int,
        internal: bool,
    ) -> None:
        self._jobs = jobs
        self._agents = agents
        self._busy = busy
        self._output_max = output_max
        # Whether internal (housekeeping) programs can run here: they need the store.
        self._internal = internal

    def bind(self, run: Run) -> Bound:
        """The run's program: as bound when it left `scheduled`, or bound now from its
        job; BindError says why it cannot be."""
        if run.program is not None:
            return Bound(run.program, None)
        job = self._jobs.job_of(run)
        if job is None:
            raise BindError(f"job {run.job_id} no longer exists")
        scope = {**run.args, "args": run.args, "run_id": run.run_id, "job_id": run.job_id}
        return Bound(bind(job.program, self._jobs.templates, scope), job)

    def start(self, run: Run, why: str) -> Decision:
        """How `run` starts, for the reason `why`."""
        try:
            bound = self.bind(run)
        except BindError as exc:
            return Refused(lifecycle.Invalid(str(exc)))
        program, job = bound.program, bound.job
        if isinstance(program, BoundInternal):
            if not self._internal:
                return Refused(lifecycle.Invalid(f"{program.kind} needs the SQLite store"), job)
            return InServer(lifecycle.StartHanded(program, why), noop=False, job=job)
        if isinstance(program, BoundNoOp):
            return InServer(lifecycle.StartHanded(program, why), True, job, program.duration)
        # Part of the bound program, so a start repeated after a restart is the same.
        program = dataclasses.replace(program, output_max=self._output_max)
        try:
            choice = self._agents.choose(program.host, program.user, self._busy)
        except (LookupError, ValueError) as exc:
            return Refused(lifecycle.Invalid(str(exc), program), job)
        attempt = run.attempt + 1
        event = lifecycle.StartHanded(
            program, why, choice.agent_id, new_proc_id(run.run_id, attempt), attempt
        )
        return ToAgent(event, tuple(choice.notes), job)
