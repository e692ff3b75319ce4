"""The engine: the one place that applies run events, writes the store, publishes
changes and asks agents to act.

Theory of operation
-------------------
Every run moves by an event (`core.lifecycle`): `apply` runs it through the
lifecycle table and carries out the effects it returns. The engine's parts decide,
and the engine applies what they decide: `planning` which runs to create ahead,
`waiter` whether a waiting run may start, `starter` where and how a run starts,
`actions` what a finished run's actions create. Each part sees the engine through
a narrow `Protocol` of what it may read, never the engine itself. `procs` keeps
which run owns each proc id; `timers` when each run next needs the engine.

Changes gather in one `Changes` batch and `commit` writes them in one transaction,
then releases what must wait for durability: agent starts and commands (a proc id
is recorded before any agent hears of it), API waiters, listeners (feeds,
metrics), and the actions of runs that finished.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from apsis_common import protocol as p
from apsis_common.errors import BadInput, NotFound, Unavailable
from apsis_common.states import State
from apsis_server.actions.runner import ActionRunner, NewRun, Note
from apsis_server.agents.dispatch import Command, CommandKind
from apsis_server.core import lifecycle
from apsis_server.core.bound import (
    BindError,
    BoundNoOp,
    BoundProcess,
    BoundProgram,
    bind,
)
from apsis_server.core.jobs import Job, args_for
from apsis_server.core.outcomes import StopContext
from apsis_server.core.planner import Key
from apsis_server.core.runs import Identity, Run, args_key
from apsis_server.core.templates import Templates
from apsis_server.engine.answers import Answers
from apsis_server.engine.journal import Journal, Written
from apsis_server.engine.planning import Planning, plan_ahead
from apsis_server.engine.ports import Agents, Listener, Settings
from apsis_server.engine.procs import NO_OUTPUT, Lengths, ProcTable, is_noop, new_proc_id, proc_spec
from apsis_server.engine.starting import InServer, Refused, Starter, ToAgent
from apsis_server.engine.timers import TimerKind, Timers
from apsis_server.engine.unfinished import ACTIVE, Unfinished
from apsis_server.engine.view import EngineView
from apsis_server.engine.waiting import Ready, Wait, Waiter
from apsis_server.store.base import STDOUT, Chunk, RunStore

log = logging.getLogger(__name__)


class Engine(EngineView):
    """Owns the unfinished runs; applies every change to them."""

    def __init__(
        self,
        store: RunStore,
        agents: Agents,
        templates: Templates,
        settings: Settings | None = None,
        *,
        clock: Callable[[], float] = time.time,
        internal: Callable[[Run], None] | None = None,
    ) -> None:
        """`internal` takes the runs of internal (housekeeping) programs; without
        it, such runs error ("needs the SQLite store")."""
        super().__init__(store, templates, clock)
        self._settings = settings = settings or Settings()
        self._agents = agents
        self._internal = internal
        self._listeners: list[Listener] = []
        self._group: asyncio.Future[None] | None = None
        self.answers = Answers(self)
        self.actions = ActionRunner(self, settings.smtp, settings.public_url)
        self.reset()

    def reset(self) -> None:
        """Forget what is held in memory about runs — on taking the lead, and on
        stepping down: the store is the truth, and what another leader wrote since
        is only there. The jobs, templates and listeners stay."""
        settings = self._settings
        self._runs = Unfinished()
        self._journal = Journal(self.store, self.clock, settings.server)
        self.procs = ProcTable()
        self._committing = False
        self._next_number: int | None = None  # read from the store when first needed
        self._planning = Planning(settings.horizon)
        self._timers = Timers(self)
        self._waiter = Waiter(self, self.expand, settings.waiting_max_time)
        internal = self._internal is not None
        self._starter = Starter(self, self._agents, self.busy, settings.output_max, internal)

    async def run(self) -> None:
        """The engine's own tasks, until cancelled: timers, planning ahead, and the
        delivery of webhooks and emails."""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._timers.run())
            tasks.create_task(plan_ahead(self))
            tasks.create_task(self.actions.run())

    async def fetch_output(
        self, agent_id: str, proc_id: str, start: int, stop: int, stream: int
    ) -> bytes:
        """Bytes of a process's stream from its agent (not stored by this call)."""
        return await self._agents.output(agent_id, proc_id, start, stop, stream)

    def subscribe(self, listener: Listener) -> None:
        """Call `listener` with every committed batch of changes."""
        self._listeners.append(listener)

    # -- applying events -----------------------------------------------------------

    def apply(self, run: Run, event: lifecycle.Event) -> Run:
        """Run `event` through the lifecycle and carry out its effects; the new run.
        IllegalTransition (409) if the run's state does not take it."""
        transition = lifecycle.apply(run, event, self.clock())
        new = transition.run
        if new.state.finished:
            self._runs.drop(new)
            self.procs.forget(new)
            self._waiter.forget(new.run_id)
        else:
            self._runs.put(new)
        self._journal.run(new)
        # A transition is logged with the state entered; a new attempt in the same
        # state is a plain line (metrics count transitions from the log).
        self.note(new.run_id, new.message or "", new.state if new.state != run.state else None)
        for effect in transition.effects:
            self._effect(new, effect)
        return new

    def _effect(self, run: Run, effect: lifecycle.Effect) -> None:
        if isinstance(effect, lifecycle.EnteredScheduled):
            self._planning.scheduled(run)
            self._timers.add(run.schedule_time or 0.0, run.run_id, TimerKind.DUE)
            if run.stop_time is not None:
                self._timers.add(run.stop_time, run.run_id, TimerKind.STOP_TIME)
        elif isinstance(effect, lifecycle.LeftScheduled):
            self._planning.unscheduled(run)
        elif isinstance(effect, lifecycle.CheckConditions):
            self.wait(run)
        elif isinstance(effect, lifecycle.SendStop):
            self._stop(run)
        elif isinstance(effect, lifecycle.WithdrawStart):
            self._agents.withdraw(effect.agent_id, effect.proc_id)
        elif isinstance(effect, lifecycle.Finished):
            self._journal.finished(run)

    def note(self, run_id: str, message: str, state: State | None = None) -> None:
        """A line for the run's log, written with the current changes."""
        self._journal.note(run_id, message, state)

    def meta(self, run_id: str, **meta: Any) -> None:
        self._journal.meta(run_id, meta)

    def move_cursors(self, cursors: Mapping[Key, float]) -> None:
        """Record schedule cursors moved by planning (or the watermark), written with
        the current changes."""
        self._journal.cursors(cursors)

    def add_output(self, run_id: str, stream: int, offset: int, data: bytes) -> None:
        """Store output of a run's stream from `offset`, next in its merged view;
        written with the current changes."""
        # A middle left out over the cap keeps its place in the merged view too.
        skipped = max(0, offset - self.procs.output_length(run_id, stream))
        merged = self.procs.merged_length(run_id) + skipped
        # Stdout alone (merged with stderr, or before any stderr) needs no place.
        place = None if stream == STDOUT and merged == offset else merged
        self._journal.output(Chunk(run_id, offset, data, stream, place))
        self.procs.stored(run_id, stream, offset + len(data), merged + len(data))

    def ack(self, agent_id: str, seq: int) -> None:
        """Record an agent's events up to `seq` as applied, with the current changes."""
        self._journal.ack(agent_id, seq)

    def agent_instance(self, agent_id: str, instance: str) -> None:
        """Record the event sequence an agent now reports in, with the current changes."""
        self._journal.instance(agent_id, instance)

    def send(self, agent_id: str, command: Command) -> None:
        """Ask an agent to act once the current changes are committed."""
        self._journal.request(agent_id, command)

    def resend_start(self, run: Run, instance: str = "") -> None:
        """Ask the run's agent again to start its proc (starts are idempotent);
        `instance`: the agent's event sequence it was first sent to, if known."""
        if run.agent_id and run.proc_id and isinstance(run.program, BoundProcess):
            start = p.StartProc(run.proc_id, proc_spec(run, run.program), instance)
            self._journal.request(run.agent_id, start)

    # -- committing ------------------------------------------------------------------

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
            while self._journal:
                self._release(self._journal.write())
        finally:
            self._committing = False

    def _release(self, written: Written) -> None:
        """After a write: what waited on it goes, and what follows is decided."""
        changes = written.changes
        for agent_id, item in written.requests:
            if isinstance(item, p.StartProc):
                try:
                    self._agents.start(agent_id, item)
                except LookupError as exc:
                    self.refused(item.proc_id, str(exc))
            else:
                self._agents.command(agent_id, item)
        self.answers.release(written.finished, changes.runs)
        if changes:
            for listener in self._listeners:
                listener(changes)
        for run in written.finished:
            self._fire_actions(run, changes.meta.get(run.run_id, {}))
            self._runs.unbind(run.run_id)
        for run in self._waiter.changed({r.job_id for r in changes.runs.values()}, self._runs):
            self._check(run)

    def _fire_actions(self, run: Run, meta: Mapping[str, Any]) -> None:
        for decision in self.actions.fire(run, self.job_of(run), meta):
            if isinstance(decision, Note):
                self.note(decision.run_id, decision.message)
            elif isinstance(decision, NewRun):
                self._new_run(decision)

    def _new_run(self, decision: NewRun) -> None:
        new = self.create(
            decision.job,
            decision.args,
            decision.when,
            rerun_of=decision.rerun_of,
            retry=decision.retry,
            why=decision.why,
        )
        self.note(decision.source, decision.note.replace("{run_id}", new.run_id))

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

    # -- timers -------------------------------------------------------------

    def fire(self, run_id: str, kind: TimerKind) -> None:
        """Apply a timer come due: what `kind` means for the run as it is now."""
        run = self._runs.get(run_id)
        if run is None:
            return
        try:
            if kind == TimerKind.DUE and run.state == State.SCHEDULED:
                self._due(run)
            elif kind == TimerKind.WAITING_LIMIT and run.state == State.WAITING:
                self._waiter.forget(run.run_id)
                waited = self.clock() - run.times.get(State.WAITING.value, 0.0)
                self.apply(run, lifecycle.WaitedTooLong(waited))
            elif kind == TimerKind.CONDITION_LIMIT and run.state == State.WAITING:
                self._check(run)
            elif kind == TimerKind.STOP_TIME and run.state == State.RUNNING:
                self.apply(run, lifecycle.StopTimeReached())
            elif kind == TimerKind.NO_OP and run.state in (State.RUNNING, State.STOPPING):
                ok = not isinstance(run.program, BoundNoOp) or run.program.success
                ended = lifecycle.Succeeded if ok else lifecycle.Failed
                self.apply(run, ended("no-op finished"))
        except Unavailable:
            raise
        except Exception:
            log.exception("run %s: timer %s failed", run_id, kind)
            self.error_run(run_id, lifecycle.InternalError())

    # -- creating runs -----------------------------------------------------------

    def _peek(self) -> int:
        """The number the next run gets: one past the largest the store ever had."""
        if self._next_number is None:
            self._next_number = self.store.max_run_number() + 1
        return self._next_number

    def _allocate(self) -> str:
        run_id = f"r{self._peek()}"
        self._next_number = self._peek() + 1
        return run_id

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
        program: BoundProgram | None = None,
        retry: int = 0,
        why: str | None = None,
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
        why = why or (
            "rerun of " + rerun_of if rerun_of else ("scheduled by hand" if ad_hoc else "scheduled")
        )
        return self.apply(run, lifecycle.Scheduled(why))

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
        job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r}")
        try:
            args = args_for(job, args)
        except ValueError as exc:
            raise BadInput(str(exc)) from None
        now = self.clock()
        run = self.create(
            job,
            dict(args),
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
        scope = {"args": {}, "run_id": f"r{self._peek()}", "job_id": program.job_id}
        try:
            bound = bind(program.program, self._templates, scope)
        except BindError as exc:
            raise BadInput(str(exc)) from None
        when = now if when is None else when
        why = "ad-hoc program scheduled by hand"
        run = self.create(program, {}, when, ad_hoc=True, program=bound, why=why)
        self._runs.bind(run.run_id, program)
        if run.schedule_time is not None and run.schedule_time <= now:
            self._due(run)
        self.commit()
        return self.get(run.run_id)

    def _due(self, run: Run) -> None:
        # The program is bound as the run leaves `scheduled`: a template that fails
        # errors the run now, not after it has waited for its conditions.
        try:
            bound = self._starter.bind(run)
        except BindError as exc:
            self.apply(run, lifecycle.Invalid(str(exc)))
        else:
            if bound.job is not None:
                self._runs.bind(run.run_id, bound.job)
            self.apply(run, lifecycle.Due(bound.program))
        if run.schedule_key is not None:
            self.plan([run.job_id])

    # -- jobs and planning ---------------------------------------------------------------

    def set_jobs(self, jobs: Mapping[str, Job], templates: Templates) -> None:
        """Take the job definitions at startup (planned by `plan_ahead`, not here)."""
        self._jobs, self._templates = dict(jobs), templates

    def replace_jobs(self, jobs: Mapping[str, Job], templates: Templates) -> dict[str, list[str]]:
        """Take new job definitions: withdraw and replan the scheduled runs of changed
        and removed jobs (runs scheduled by hand stay); answer what changed."""
        now = self.clock()
        replan = self._planning.replan(self._jobs, jobs, self.unfinished_of, now)
        self._jobs, self._templates = dict(jobs), templates
        for run in replan.withdraw:
            self.withdraw(run)
        self.move_cursors(replan.cursors)
        self._plan(replan.plan, again=True)
        self.commit()
        return {"added": replan.added, "changed": replan.changed, "removed": replan.removed}

    def plan(self, job_ids: list[str]) -> int:
        """Create the scheduled runs planning asks for, for these jobs; how many."""
        return self._plan(job_ids)

    def _plan(self, job_ids: list[str], again: bool = False) -> int:
        now = self.clock()
        jobs = [self._jobs[j] for j in job_ids if j in self._jobs]
        taken = (lambda job_id: self.scheduled_identities(job_id, now)) if again else None
        plan = self._planning.plan(jobs, now, taken)
        for item in plan.runs:
            run = self.create(
                self._jobs[item.job_id],
                dict(item.due.args),
                item.due.time,
                schedule_key=item.schedule_key,
                stop_time=item.due.stop_time,
            )
            if item.due.error is not None:
                self.apply(run, lifecycle.Invalid(item.due.error))
        self.move_cursors(plan.cursors)
        return len(plan.runs)

    def scheduled_identities(self, job_id: str, since: float) -> set[Identity]:
        """Identities (schedule time, args) of the job's runs planned from schedules
        for `since` or later, in any state: in the store, or changed and not yet
        written; withdrawn ones are free again."""
        found = {
            run_id: ident
            for run_id, ident in self.store.scheduled_identities(job_id, since).items()
            if run_id not in self._journal.changes.deleted
        }
        # Unfinished runs are in memory; finished ones not yet written are the round's.
        for run in (*self._journal.finishing, *self.unfinished_of(job_id)):
            if (
                run.job_id == job_id
                and run.schedule_key is not None
                and run.schedule_time is not None
                and run.schedule_time >= since
            ):
                found[run.run_id] = (run.schedule_time, args_key(run.args))
        return set(found.values())

    def withdraw(self, run: Run) -> None:
        """Take back a scheduled run that planning no longer wants: deleted from the
        store as if never planned."""
        self._runs.drop(run)
        self._planning.unscheduled(run)
        self._journal.withdraw(run.run_id)

    # -- waiting and starting ---------------------------------------------------------------

    def wait(self, run: Run) -> None:
        """A run has just become waiting (or is waiting after a restart): arm its
        waiting limit and check its conditions."""
        limit = self._waiter.limit(run)
        since = run.times.get(State.WAITING.value, self.clock())
        if limit is not None:
            self._timers.add(since + limit, run.run_id, TimerKind.WAITING_LIMIT)
        for deadline in self._waiter.deadlines(run, since):
            self._timers.add(deadline, run.run_id, TimerKind.CONDITION_LIMIT)
        self._check(run)

    def _check(self, run: Run) -> None:
        decision = self._waiter.check(run, self.clock())
        if isinstance(decision, Wait):
            if decision.note is not None:
                self.note(run.run_id, decision.note)
        elif isinstance(decision, Ready):
            self.start(run, decision.why)
        else:
            self.apply(run, decision)

    def start(self, run: Run, why: str) -> None:
        """Start a scheduled or waiting run now: hand its program to where it runs."""
        self._waiter.forget(run.run_id)
        decision = self._starter.start(run, why)
        if decision.job is not None:
            self._runs.bind(run.run_id, decision.job)  # its conditions and actions, too
        if isinstance(decision, Refused):
            self.apply(run, decision.event)
        elif isinstance(decision, InServer):
            run = self.apply(run, decision.event)
            if decision.noop:
                run = self.apply(run, lifecycle.Started("no-op running"))
                self._timers.add(self.clock() + decision.duration, run.run_id, TimerKind.NO_OP)
            else:
                run = self.apply(run, lifecycle.Started("running in the server"))
                assert self._internal is not None  # the starter refuses them otherwise
                self._internal(run)
        elif isinstance(decision, ToAgent):
            self._to_agent(run, decision)

    def _to_agent(self, run: Run, decision: ToAgent) -> None:
        run = self.apply(run, decision.event)
        for note in decision.notes:
            self.note(run.run_id, note)
        assert run.proc_id is not None and isinstance(run.program, BoundProcess)
        stop = StopContext(stop_signal=run.program.stop_signal)
        self.procs.add(run.run_id, run.proc_id, stop=stop)
        self.resend_start(run)

    def restart_proc(self, run: Run, why: str) -> None:
        """Ask the agent again, under the next attempt's proc id (the state stays)."""
        if run.program is None or run.agent_id is None:
            return
        attempt = run.attempt + 1
        proc_id = new_proc_id(run.run_id, attempt)
        self.procs.moved(run.run_id, run.proc_id, proc_id)
        self.resend_start(self.apply(run, lifecycle.Restarted(proc_id, attempt, why)))

    # -- stopping and ending ---------------------------------------------------------------

    def _stop(self, run: Run) -> None:
        """Ask a stopping run's process to stop (a no-op just succeeds)."""
        self.procs.stop_requested(run.run_id)
        self.meta(run.run_id, stop_requested=True)
        if is_noop(run):
            self.apply(run, lifecycle.Succeeded("stopped"))
        elif run.agent_id is not None and run.proc_id is not None:
            self.send(run.agent_id, Command(CommandKind.STOP, run.proc_id, p.StopRequest()))

    def error_run(self, run_id: str, event: lifecycle.Event) -> None:
        """Apply an event that ends an unfinished run in error, if it is still one."""
        run = self._runs.get(run_id)
        if run is not None and not run.state.finished:
            self.apply(run, event)

    def agent_lost(self, agent_id: str, silence: float) -> None:
        """An agent has been unreachable past the lost timeout: its runs error."""
        lost = [r for r in self._runs.values() if r.agent_id == agent_id and r.state in ACTIVE]
        for run in lost:
            self.apply(run, lifecycle.AgentLost(agent_id, silence))
        if lost:
            self.commit()

    def refused(self, proc_id: str, error: str) -> None:
        """An agent refused to start a process."""
        run = self.run_for(proc_id)
        if run is not None:
            self.error_run(run.run_id, lifecycle.StartRefused(error))
            self.commit()

    # -- restore ----------------------------------------------------------------

    def adopt(self, run: Run, output: Lengths = NO_OUTPUT, stop: StopContext | None = None) -> None:
        """Take an unfinished run read back from the store as one of ours; its
        process's output stored and stop context count if it has a proc id."""
        self._runs.put(run)
        if run.proc_id is not None:
            self.procs.add(run.run_id, run.proc_id, output, stop)
        if run.state == State.SCHEDULED:
            self._planning.scheduled(run)

    def arm(self, run_id: str, when: float, kind: TimerKind) -> None:
        """A timer for an adopted run."""
        self._timers.add(when, run_id, kind)

    def load_cursors(self, cursors: Mapping[Key, float]) -> None:
        """Take the schedule cursors read back from the store (not written again)."""
        self._planning.load_cursors(cursors)

    def cursor(self, key: Key) -> float | None:
        """How far a schedule is planned: its last planned time, if any."""
        return self._planning.cursor(key)

    def set_cursor(self, key: Key, value: float) -> None:
        """Move a schedule's cursor, written with the current changes."""
        self.move_cursors(self._planning.set_cursor(key, value))
