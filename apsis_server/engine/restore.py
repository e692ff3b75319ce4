"""Bringing the engine back after a restart: unfinished runs, then catch-up.

Unfinished runs are loaded from the store and whatever they wait on is re-armed:
schedule timers, condition checks, starts that were recorded but perhaps never
reached the agent (starts are idempotent by proc id). Then the schedule times
that passed while the server was down — between the watermark and now — are
handled by each job's catch-up policy: run, or recorded as `skipped` with the
reason. None is dropped silently and none is scheduled twice. A job file changed
while the server was down is taken as a reload would take it: scheduled runs of
schedules it no longer has are withdrawn.
"""

from __future__ import annotations

import logging

from apsis_common import protocol as p
from apsis_common.states import State
from apsis_server.agents.dispatch import Command, CommandKind
from apsis_server.core import lifecycle
from apsis_server.core.bound import BoundNoOp, BoundProcess
from apsis_server.core.catchup import SKIP_REASON, CatchUp, catch_up
from apsis_server.core.outcomes import StopContext
from apsis_server.core.runs import Identity, Run, args_key
from apsis_server.engine.engine import Engine
from apsis_server.engine.timers import WATERMARK, TimerKind
from apsis_server.store.base import OutputName

log = logging.getLogger(__name__)


def restore(engine: Engine, default: CatchUp) -> None:
    """Load unfinished runs, re-arm them, and apply catch-up; commits."""
    cursors = engine.store.cursors()
    watermark = cursors.pop(WATERMARK, None)
    engine.load_cursors(cursors)
    withdrawn = 0
    for run in engine.store.unfinished():
        if _unplanned(engine, run):
            engine.withdraw(run)
            withdrawn += 1
        else:
            _rearm(engine, run)
    if withdrawn:
        log.info("%d scheduled runs withdrawn: their schedules changed while down", withdrawn)
    if watermark is not None:
        _catch_up(engine, watermark, engine.clock(), default)
    engine.commit()


def _unplanned(engine: Engine, run: Run) -> bool:
    """Whether `run` is a scheduled run of a schedule its job no longer has: the job
    file changed while the server was down, and a reload would take it back (the
    job's current schedules, catch-up included, decide about its times)."""
    job = engine.jobs.get(run.job_id)
    if run.state != State.SCHEDULED or run.schedule_key is None or job is None:
        return False
    return all(schedule.key != run.schedule_key for schedule in job.schedules)


def _rearm(engine: Engine, run: Run) -> None:
    if run.proc_id is None:
        engine.adopt(run)
    else:
        meta = engine.store.meta(run.run_id)
        process = run.program if isinstance(run.program, BoundProcess) else None
        ctx = StopContext(
            stop_requested=bool(meta.get("stop_requested")),
            stop_signal=process.stop_signal if process is not None else 15,
            timed_out=bool(meta.get("timed_out")),
        )
        names = (OutputName.STDOUT, OutputName.STDERR, OutputName.MERGED)
        out, err, merged = (engine.store.output_length(run.run_id, n) for n in names)
        engine.adopt(run, (out, err, merged), ctx)
    if run.stop_time is not None:
        engine.arm(run.run_id, run.stop_time, TimerKind.STOP_TIME)
    if run.state == State.SCHEDULED:
        engine.arm(run.run_id, run.schedule_time or 0.0, TimerKind.DUE)
    elif run.state == State.WAITING:
        engine.wait(run)
    elif run.state == State.STARTING:
        # Sent before this server stopped, to the agent's last known event sequence:
        # an agent whose state was reset since refuses it (it may have started it).
        engine.resend_start(run, engine.store.instance(run.agent_id or ""))
    elif run.state in (State.RUNNING, State.STOPPING) and isinstance(run.program, BoundNoOp):
        # It ends when it would have, had the server not stopped (or at once, if past).
        end = run.times.get(State.RUNNING.value, engine.clock()) + run.program.duration
        engine.arm(run.run_id, end, TimerKind.NO_OP)
    elif run.state == State.STOPPING and run.agent_id and run.proc_id:
        # The stop may not have reached the agent before the restart; it is idempotent.
        engine.send(run.agent_id, Command(CommandKind.STOP, run.proc_id, p.StopRequest()))


def _catch_up(engine: Engine, watermark: float, now: float, default: CatchUp) -> None:
    # Scheduled runs planned before the outage, by identity.
    planned = {
        (r.job_id, r.schedule_key, r.schedule_time): r
        for r in engine.runs.values()
        if r.state == State.SCHEDULED and r.schedule_key is not None
    }
    for job in engine.jobs.values():
        policy = (job.catch_up or CatchUp()).over(default)
        plan = catch_up(job.schedules, job.params, watermark, now, policy)
        taken: set[Identity] | None = None  # read when first needed
        oldest: Run | None = None  # the oldest missed time recorded
        for decision, missed in [("run", m) for m in plan.run] + [("skip", m) for m in plan.skip]:
            due = missed.due
            run = planned.get((job.job_id, missed.schedule_key, due.time))
            key = (job.job_id, missed.schedule_key)
            cursor = engine.cursor(key)
            if run is None:
                if cursor is not None and due.time <= cursor:
                    continue  # planned once already, and has run or been handled since
                if taken is None:
                    taken = engine.scheduled_identities(job.job_id, watermark)
                if (due.time, args_key(due.args)) in taken:
                    continue  # a run of another (since changed) schedule had this time
                run = engine.create(
                    job,
                    dict(due.args),
                    due.time,
                    schedule_key=missed.schedule_key,
                    stop_time=due.stop_time,
                )
                taken.add((due.time, args_key(due.args)))
            engine.set_cursor(key, due.time if cursor is None else max(cursor, due.time))
            if decision == "skip":
                run = engine.apply(run, lifecycle.Skipped(SKIP_REASON))
            if oldest is None or due.time < (oldest.schedule_time or 0.0):
                oldest = run
        if plan.not_listed:
            # Too many to record one by one: said on the oldest run that is recorded.
            message = f"{plan.not_listed} older times missed while the server was down"
            message += " are not recorded (too many)"
            log.warning("job %s: %s", job.job_id, message)
            if oldest is not None:
                engine.note(oldest.run_id, message)
