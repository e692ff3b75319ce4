"""The engine: the one place that applies run transitions, writes the store,
publishes changes and asks agents to act.

Every decision comes from the pure core (`lifecycle`, `planner`, `outcomes`);
the engine applies them. Changes gather in one `Changes` batch and `commit`
writes them in one transaction, then releases what must wait for durability:
agent starts (a proc id is recorded before any agent hears of it), waiters and
listeners. The parts it owns each keep one concern and act through its methods:
`planning` (schedules planned ahead), `waiter` (conditions), `starter` (a run's
program to where it runs), `procs` (which run owns each proc id), `timers`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from apsis_common import protocol as p
from apsis_common.errors import BadInput, NotFound, Unavailable
from apsis_common.states import FINISHED, State
from apsis_server.actions.runner import ActionRunner
from apsis_server.agents.choice import Choice
from apsis_server.agents.dispatch import Command
from apsis_server.core import lifecycle
from apsis_server.core.jobs import Job
from apsis_server.core.outcomes import StopContext
from apsis_server.core.planner import Horizon, Key
from apsis_server.core.programs import BindError, bind
from apsis_server.core.runs import Identity, LogEntry, Run, args_key, check_args
from apsis_server.core.templates import Templates
from apsis_server.engine.answers import Answers
from apsis_server.engine.planning import Planning
from apsis_server.engine.procs import ProcTable, is_noop, proc_spec
from apsis_server.engine.starting import Starter
from apsis_server.engine.timers import Timers
from apsis_server.engine.waiting import Waiter
from apsis_server.store.base import Changes, RunStore

log = logging.getLogger(__name__)

Listener = Callable[[Changes], None]


class Agents(Protocol):
    """What the engine needs of the agent registry."""

    def choose(self, host: str | None, user: str | None) -> Choice:
        """The agent to run on `host` as `user`, with notes for the run log;
        LookupError or ValueError (saying why) if there is none."""

    def start(self, agent_id: str, proc: p.StartProc) -> None: ...

    def command(self, agent_id: str, command: Command) -> None: ...

    def withdraw(self, agent_id: str, proc_id: str) -> None:
        """Drop a start not yet sent: its run ended first."""

    async def output(self, agent_id: str, proc_id: str, start: int, stop: int) -> bytes: ...


class Engine:
    """Owns the unfinished runs; applies every change to them."""

    def __init__(
        self,
        store: RunStore,
        agents: Agents,
        templates: Templates,
        horizon: Horizon | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.agents = agents
        self.templates = templates
        self.clock = clock
        self.jobs: dict[str, Job] = {}
        self.runs: dict[str, Run] = {}
        self.listeners: list[Listener] = []
        self._changes = Changes()
        self._outgoing: list[tuple[str, p.StartProc | Command]] = []
        self._next_number = store.max_run_number() + 1
        self.by_job: dict[str, set[str]] = {}
        # The job definition each run left `scheduled` under: its conditions and
        # actions are those, whatever a reload does meanwhile (kept in memory only:
        # after a restart a run follows its job's current definition).
        self.bound_jobs: dict[str, Job] = {}
        self._finished_now: list[Run] = []
        self._committing = False
        self._group: asyncio.Future[None] | None = None
        self.store_error: str | None = None
        self.waiter = Waiter(self)
        self.answers = Answers(self)
        self.planning = Planning(self, horizon or Horizon())
        self.procs = ProcTable(self)
        self.timers = Timers(self)
        self.starter = Starter(self)
        self.actions = ActionRunner(self)

    # -- applying changes -----------------------------------------------------

    def _put(self, run: Run, message: str | None = None, state: State | None = None) -> Run:
        if run.state in FINISHED:
            self.runs.pop(run.run_id, None)
            self.procs.forget(run)
            same_job = self.by_job.get(run.job_id)
            if same_job is not None:
                same_job.discard(run.run_id)
                if not same_job:
                    del self.by_job[run.job_id]
            self.waiter.forget(run.run_id)
        else:
            self.runs[run.run_id] = run
            self.by_job.setdefault(run.job_id, set()).add(run.run_id)
        self._changes.runs[run.run_id] = run
        if message is not None:
            self.note(run.run_id, message, state)
        return run

    def note(self, run_id: str, message: str, state: State | None = None) -> None:
        self._changes.log.append(LogEntry(run_id, self.clock(), message, state))

    def transition(self, run: Run, state: State, message: str, **changes: Any) -> Run:
        new = lifecycle.transition(run, state, self.clock(), message, **changes)
        if run.state == State.SCHEDULED:
            self.planning.unscheduled(run)
        if state in FINISHED:
            self._finished_now.append(new)
            if run.state == State.STARTING and run.agent_id and run.proc_id:
                # Ended before its agent had it (an operator, a refusal): a start
                # still queued must not go out after the run is over.
                self.agents.withdraw(run.agent_id, run.proc_id)
        return self._put(new, message, state)

    def meta(self, run_id: str, **meta: Any) -> None:
        self._changes.meta.setdefault(run_id, {}).update(meta)

    def move_cursors(self, cursors: Mapping[Key, float]) -> None:
        """Record schedule cursors moved by planning (or the watermark), written with
        the current changes."""
        self._changes.cursors.update(cursors)

    def scheduled_identities(self, job_id: str, since: float) -> set[Identity]:
        """Identities (schedule time, args) of the job's runs planned from schedules
        for `since` or later, in any state: in the store, or changed and not yet
        written; withdrawn ones are free again."""
        found = {
            run_id: ident
            for run_id, ident in self.store.scheduled_identities(job_id, since).items()
            if run_id not in self._changes.deleted
        }
        # Unfinished runs are in memory; finished ones not yet written are the round's.
        unfinished = [self.runs[run_id] for run_id in self.by_job.get(job_id, ())]
        for run in (*self._finished_now, *unfinished):
            if (
                run.job_id == job_id
                and run.schedule_key is not None
                and run.schedule_time is not None
                and run.schedule_time >= since
            ):
                found[run.run_id] = (run.schedule_time, args_key(run.args))
        return set(found.values())

    def job_of(self, run: Run) -> Job | None:
        """The definition `run` follows: as bound when it left `scheduled`, else the
        job's current one; None if its job is gone."""
        return self.bound_jobs.get(run.run_id) or self.jobs.get(run.job_id)

    def withdraw(self, run: Run) -> None:
        """Take back a scheduled run that planning no longer wants: deleted from the
        store as if never planned."""
        self.runs.pop(run.run_id, None)
        same_job = self.by_job.get(run.job_id)
        if same_job is not None:
            same_job.discard(run.run_id)
        self.planning.unscheduled(run)
        self._changes.runs.pop(run.run_id, None)
        self._changes.deleted.add(run.run_id)

    # -- what agents' facts and housekeeping change ----------------------------------

    def add_output(self, run_id: str, offset: int, data: bytes) -> None:
        """Store a run's output from `offset`, written with the current changes."""
        self._changes.output.append((run_id, offset, data))
        self.procs.set_output_length(run_id, offset + len(data))

    def ack(self, agent_id: str, seq: int) -> None:
        """Record an agent's events up to `seq` as applied, with the current changes."""
        self._changes.acks[agent_id] = seq

    def resend_start(self, run: Run) -> None:
        """Ask the run's agent again to start its proc (starts are idempotent)."""
        if run.agent_id and run.proc_id and run.program:
            start = p.StartProc(run.proc_id, proc_spec(run, run.program))
            self._outgoing.append((run.agent_id, start))

    def send(self, agent_id: str, command: Command) -> None:
        """Ask an agent to act once the current changes are committed."""
        self._outgoing.append((agent_id, command))

    def commit(self) -> None:
        """Write the gathered changes in one transaction, then release what waited on it.

        What follows from the changes (actions of finished runs, waiting runs whose
        dependencies moved) is decided and committed in further rounds, until
        nothing changes.
        """
        if self._committing:
            return  # the round under way picks these changes up
        self._committing = True
        try:
            while self._changes or self._outgoing:
                self._commit_round()
        finally:
            self._committing = False

    def _commit_round(self) -> None:
        changes, self._changes = self._changes, Changes()
        outgoing, self._outgoing = self._outgoing, []
        finished, self._finished_now = self._finished_now, []
        if changes:
            try:
                self.store.write(changes)
            except Unavailable as exc:
                # Keep everything for the next try: memory stays ahead of the store,
                # never apart from it, and nothing waiting on durability is released.
                self._changes = changes.merged(self._changes)
                self._outgoing = outgoing + self._outgoing
                self._finished_now = finished + self._finished_now
                if self.store_error is None:
                    log.error("store write failed; retrying: %s", exc)
                self.store_error = str(exc)
                raise Unavailable(f"{exc}; kept, and written once the store is writable") from exc
            if self.store_error is not None:
                log.info("store writable again")
                self.store_error = None
        for agent_id, item in outgoing:
            if isinstance(item, p.StartProc):
                self.agents.start(agent_id, item)
            else:
                self.agents.command(agent_id, item)
        self.answers.release(finished, changes.runs)
        if changes:
            for listener in self.listeners:
                listener(changes)
        self.actions.fire(finished, changes.meta)
        for run in finished:
            self.bound_jobs.pop(run.run_id, None)
        self.waiter.changed({run.job_id for run in changes.runs.values()})

    # -- timers -------------------------------------------------------------

    def fire(self, run_id: str, kind: str) -> None:
        """Apply a timer come due: what `kind` means for the run as it is now."""
        run = self.runs.get(run_id)
        if run is None:
            return
        try:
            if kind == "due" and run.state == State.SCHEDULED:
                self._due(run)
            elif kind == "waiting-limit":
                self.waiter.expire(run)
            elif kind == "stop-time" and run.state == State.RUNNING:
                run = self.transition(
                    run, State.STOPPING, "stop time reached", stop_time=self.clock()
                )
                self.request_stop(run)
            elif kind == "no-op" and run.state in (State.RUNNING, State.STOPPING):
                ok = bool((run.program or {}).get("success", True))
                self.transition(run, State.SUCCESS if ok else State.FAILURE, "no-op finished")
        except Unavailable:
            raise
        except Exception:
            log.exception("run %s: timer %s failed", run_id, kind)
            self.error_run(run_id, "internal error; see the server log")

    # -- creating runs -----------------------------------------------------------

    def _allocate(self) -> str:
        run_id = f"r{self._next_number}"
        self._next_number += 1
        return run_id

    def _check_args(self, job: Job, args: Mapping[str, str]) -> dict[str, str]:
        unknown = set(args) - set(job.params)
        if unknown:
            raise BadInput(f"job {job.job_id} has no param(s): {', '.join(sorted(unknown))}")
        missing = [p for p in job.params if p not in args]
        if missing:
            raise BadInput(f"job {job.job_id} needs arg(s): {', '.join(missing)}")
        try:
            check_args(args)
        except ValueError as exc:
            raise BadInput(str(exc)) from None
        return dict(args)

    def create(
        self,
        job: Job,
        args: dict[str, str],
        when: float,
        *,
        schedule_key: str | None = None,
        stop_time: float | None = None,
        ad_hoc: bool = False,
        rerun_of: str | None = None,
        program: Mapping[str, Any] | None = None,
        retry: int = 0,
        message: str | None = None,
    ) -> Run:
        """A new run in `scheduled`, due at `when`."""
        run = Run(
            run_id=self._allocate(),
            job_id=job.job_id,
            args=args,
            state=State.NEW,
            schedule_time=when,
            ad_hoc=ad_hoc,
            rerun_of=rerun_of,
            labels=job.labels,
            schedule_key=schedule_key,
            stop_time=stop_time,
            program=program,
            retry=retry,
        )
        why = message or (
            "rerun of " + rerun_of if rerun_of else ("scheduled by hand" if ad_hoc else "scheduled")
        )
        run = self.transition(run, State.SCHEDULED, why)
        self.planning.scheduled(run)
        self.timers.add(when, run.run_id, "due")
        if stop_time is not None:
            self.timers.add(stop_time, run.run_id, "stop-time")
        return run

    def schedule(
        self,
        job_id: str,
        args: Mapping[str, str],
        when: float | None = None,
        rerun_of: str | None = None,
        commit: bool = True,
    ) -> Run:
        """Create a run of a job by hand, due at `when` (now if None); with
        `commit=False` the caller awaits `committed()` before relying on it."""
        job = self.jobs.get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r}")
        now = self.clock()
        run = self.create(
            job,
            self._check_args(job, args),
            now if when is None else when,
            ad_hoc=True,
            rerun_of=rerun_of,
        )
        if run.schedule_time is not None and run.schedule_time <= now:
            self._due(run)
        if commit:
            self.commit()
        return self.get(run.run_id)

    def schedule_program(self, program: Job, when: float | None = None) -> Run:
        """An ad-hoc run of a program given directly (its own one-off job, `ADHOC_JOB`)."""
        now = self.clock()
        # Bound now, with the id `create` is about to allocate.
        scope = {"args": {}, "run_id": f"r{self._next_number}", "job_id": program.job_id}
        try:
            bound = bind(program.program, self.templates, scope)
        except BindError as exc:
            raise BadInput(str(exc)) from None
        run = self.create(program, {}, now if when is None else when, ad_hoc=True, program=bound)
        self.bound_jobs[run.run_id] = program
        if run.schedule_time is not None and run.schedule_time <= now:
            self._due(run)
        self.commit()
        return self.get(run.run_id)

    def committed(self) -> asyncio.Future[None]:
        """Done once every change made so far is committed (or failed with
        Unavailable): whatever the requests of one turn of the event loop
        changed is written in one transaction, the next turn."""
        if self._group is None:
            self._group = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().call_soon(self._commit_group)
        return self._group

    def _commit_group(self) -> None:
        group, self._group = self._group, None
        assert group is not None
        try:
            self.commit()
        except Unavailable as exc:
            group.set_exception(exc)
            group.exception()  # retrieved here: not every waiter may still be there
            return
        group.set_result(None)

    def _due(self, run: Run) -> None:
        # The program is bound as the run leaves `scheduled`: a template that fails
        # errors the run now, not after it has waited for its conditions.
        try:
            program = self.starter.bind(run)
        except BindError as exc:
            run = self.transition(run, State.ERROR, str(exc))
        else:
            run = self.transition(run, State.WAITING, "schedule time reached", program=program)
        if run.schedule_key is not None:
            self.planning.plan([run.job_id])
        if run.state == State.WAITING:
            self.waiter.enter(run)

    # -- what operations and timers need ---------------------------------------

    def get(self, run_id: str) -> Run:
        """The run as it is now: unfinished, finished but not yet written (the store
        still has its previous state), or from the store; NotFound if there is none."""
        run = self.runs.get(run_id) or self._changes.runs.get(run_id) or self.store.get(run_id)
        if run is None:
            raise NotFound(f"no run {run_id!r}")
        return run

    def request_stop(self, run: Run) -> None:
        """Ask a stopping run's process to stop (a no-op just succeeds)."""
        self.procs.stop_requested(run.run_id)
        self.meta(run.run_id, stop_requested=True)
        if is_noop(run):
            self.transition(run, State.SUCCESS, "stopped")
        elif run.agent_id is not None and run.proc_id is not None:
            self.send(run.agent_id, Command("stop", run.proc_id, p.StopRequest()))

    def mark_run(self, run: Run, state: State, message: str | None = None) -> Run:
        """Set a run's state by hand, as `lifecycle.mark` allows; returns it."""
        new = lifecycle.mark(run, state, self.clock(), message or f"marked {state} by hand")
        return self._put(new, new.message, state)

    def restart_proc(self, run: Run, why: str) -> None:
        """Ask the agent again, under the next attempt's proc id (the state stays)."""
        program, agent_id = run.program, run.agent_id
        if program is None or agent_id is None:
            return
        attempt = run.attempt + 1
        proc_id = f"{run.run_id}.{attempt}"
        self.procs.moved(run.run_id, run.proc_id, proc_id)
        run = self._put(run.replace(proc_id=proc_id, attempt=attempt), f"{why}; starting again")
        self.resend_start(run)

    def agent_lost(self, agent_id: str, silence: float) -> None:
        """An agent has been unreachable past the lost timeout: its runs error."""
        active = (State.STARTING, State.RUNNING, State.STOPPING)
        lost = [r for r in self.runs.values() if r.agent_id == agent_id and r.state in active]
        for run in lost:
            self.transition(run, State.ERROR, f"agent {agent_id} unreachable for {silence:.0f}s")
        if lost:
            self.commit()

    def refused(self, proc_id: str, error: str) -> None:
        """An agent refused to start a process."""
        run = self.procs.run_for(proc_id)
        if run is not None:
            self.error_run(run.run_id, error)
            self.commit()

    def error_run(self, run_id: str, message: str) -> None:
        run = self.runs.get(run_id)
        if run is not None and run.state not in FINISHED:
            self.transition(run, State.ERROR, message)

    # -- restore ----------------------------------------------------------------

    def adopt(self, run: Run, output_length: int = 0, stop: StopContext | None = None) -> None:
        """Take an unfinished run read back from the store as one of ours; its
        process's output length and stop context count if it has a proc id."""
        self.runs[run.run_id] = run
        self.by_job.setdefault(run.job_id, set()).add(run.run_id)
        if run.proc_id is not None:
            self.procs.add(run.run_id, run.proc_id, output_length, stop)
        if run.state == State.SCHEDULED:
            self.planning.scheduled(run)
