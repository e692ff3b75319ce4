"""Turning what agents report (facts about processes) into run events.

The agent never decides success or failure: it says a process started, wrote
bytes at an offset, was signalled, exited or was lost. Events are applied in
sequence order, each once: a duplicate (seq ≤ acked) is ignored and nothing is
applied past a gap. The new ack is committed in the same transaction as the
changes it covers. `Facts` is also what the registry reports to (`Reports`):
starts an agent accepted or refused, agents lost, agents to reconcile.

Both sides' counts are checked on every batch. A batch names the agent's sequence
(`instance`, made with its outbox) and the agent's own ack. A new sequence (its
state dir was wiped or replaced) restarts from the agent's ack; an agent that holds
a higher ack than the server (the server restored from a backup, or started on a
fresh state dir) skips the server forward to it, since the agent no longer has
those events. Either way the runs on that agent are reconciled with its process
list, so those it cannot vouch for end in `error` with the reason: never an event
dropped as a duplicate, never a gap waited on forever. An agent that holds a lower
ack in the same sequence only missed an acknowledgement, and resends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping

from apsis_common import protocol as p
from apsis_common.errors import ApsisError, Unavailable
from apsis_common.states import State
from apsis_server.agents.client import AgentClient
from apsis_server.agents.dispatch import Command, CommandKind
from apsis_server.agents.reconcile import reconcile
from apsis_server.core import lifecycle
from apsis_server.core.bound import BoundProcess
from apsis_server.core.outcomes import StopContext, outcome, signal_name
from apsis_server.core.runs import Run
from apsis_server.engine.engine import Engine
from apsis_server.store.base import STDERR, STDOUT

log = logging.getLogger(__name__)

OnAgentStarted = Callable[[str, int], Awaitable[None]]

# What an agent reports for a process whose start it cannot vouch for.
AGENT_STOPPED_DURING_START = "agent stopped during start"


class Facts:
    """Applies agents' event batches, and the registry's reports, to the engine's runs."""

    def __init__(self, engine: Engine, on_agent_started: OnAgentStarted) -> None:
        """`on_agent_started(agent_id, epoch)`: an agent says it (re)started."""
        self.engine = engine
        self._on_agent_started = on_agent_started
        self._acks: dict[str, int] = {}
        self._instances: dict[str, str] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.last_seen: dict[str, float] = {}

    def reset(self) -> None:
        """Forget the acks and sequences read from the store: another leader may have
        moved them since (see `Engine.reset`)."""
        self._acks.clear()
        self._instances.clear()
        self.last_seen.clear()

    def acked(self, agent_id: str) -> int:
        if agent_id not in self._acks:
            self._acks[agent_id] = self.engine.store.ack(agent_id)
        return self._acks[agent_id]

    async def apply(self, agent_id: str, batch: p.EventBatch) -> int:
        """Apply a batch; the highest contiguous sequence number now applied."""
        lock = self._locks.setdefault(agent_id, asyncio.Lock())
        async with lock:
            self.last_seen[agent_id] = self.engine.clock()
            acked = start = self.acked(agent_id)
            resync = self._resync(agent_id, batch, acked)
            if resync is not None:
                acked = start = resync
                self.engine.ack(agent_id, acked)
            started: list[int] = []
            for envelope in batch.events:
                if envelope.seq <= acked:
                    continue
                if envelope.seq != acked + 1:
                    log.warning(
                        "agent %s: gap after seq %d (got %d)", agent_id, acked, envelope.seq
                    )
                    break
                if isinstance(envelope.event, p.AgentStarted):
                    started.append(envelope.event.epoch)
                else:
                    await self._apply(agent_id, envelope.event)
                acked = envelope.seq
            if acked != start:
                self.engine.ack(agent_id, acked)
            self.engine.commit()
            self._acks[agent_id] = acked
            if batch.instance:
                self._instances[agent_id] = batch.instance
        if resync is not None and not started:
            await self._on_agent_started(agent_id, batch.epoch)  # compares process lists
        for epoch in started:
            await self._on_agent_started(agent_id, epoch)
        return acked

    def _resync(self, agent_id: str, batch: p.EventBatch, acked: int) -> int | None:
        """The ack to go on from when the two sides' counts disagree (see the module
        docstring), recording the agent's sequence; None when they agree."""
        if not batch.instance:
            return None  # an agent older than sequence names: as before
        known = self._instances.get(agent_id)
        if known is None:
            known = self._instances[agent_id] = self.engine.store.instance(agent_id)
        if known != batch.instance:
            self.engine.agent_instance(agent_id, batch.instance)
        if known and known != batch.instance:
            log.warning(
                "agent %s: a new event sequence (%s, was %s: its state was reset); "
                "going on from its seq %d and reconciling its runs",
                agent_id,
                batch.instance,
                known,
                batch.acked,
            )
            return batch.acked
        if batch.acked > acked:
            log.warning(
                "agent %s: the server is behind the agent (acked %d, the agent holds %d: "
                "a store restored from a backup?); events up to %d are gone; "
                "reconciling its runs",
                agent_id,
                acked,
                batch.acked,
                batch.acked,
            )
            return batch.acked
        return None

    # -- what the registry reports ---------------------------------------------------

    def refused(self, proc_id: str, error: str) -> None:
        self.engine.refused(proc_id, error)

    def accepted(self, agent_id: str, results: list[p.StartResult]) -> None:
        self.answered(agent_id, results)
        self.engine.answers.handed_over([r.proc_id for r in results])

    def lost(self, agent_id: str, silence: float) -> None:
        self.engine.agent_lost(agent_id, silence)

    async def reconcile(self, agent_id: str, client: AgentClient) -> None:
        await reconcile(self.engine, agent_id, client)

    def busy(self) -> Mapping[str, int]:
        return self.engine.busy()

    def _run(self, agent_id: str, proc_id: str) -> Run | None:
        run = self.engine.run_for(proc_id)
        if run is None:
            log.info("agent %s: event for %s, which no unfinished run owns", agent_id, proc_id)
        return run

    async def _apply(self, agent_id: str, event: p.Event) -> None:
        engine = self.engine
        if isinstance(event, p.ProcOutput):
            run = self._run(agent_id, event.proc_id)
            if run is not None:
                self._output(
                    run, STDERR if event.fd == STDERR else STDOUT, event.offset, event.data
                )
            return
        proc_id = getattr(event, "proc_id", "")
        run = self._run(agent_id, proc_id)
        if run is None:
            if isinstance(event, p.ProcStarted):
                # Its run ended while the start was on its way (set to error by
                # hand, or given up on): nothing may run that no run watches.
                log.warning("agent %s: stopping %s, which no run owns", agent_id, proc_id)
                engine.send(agent_id, Command(CommandKind.STOP, proc_id, p.StopRequest()))
            return  # a late event of a run given up on; the agent cleans up once acked
        if isinstance(event, p.ProcStarted):
            self._started(agent_id, run, event)
        elif isinstance(event, p.ProcStartFailed):
            if event.error == AGENT_STOPPED_DURING_START and run.state == State.STARTING:
                # Not known to have started: start again, under a new proc id.
                engine.restart_proc(run, event.error)
            else:
                engine.error_run(run.run_id, lifecycle.StartRefused(event.error))
        elif isinstance(event, p.ProcSignaled):
            self._signaled(run, event)
        elif isinstance(event, p.ProcExited):
            await self._exited(agent_id, run, event)
        elif isinstance(event, p.ProcLost):
            why = f"the process was lost ({event.reason.replace('_', ' ')})"
            engine.error_run(run.run_id, lifecycle.ProcLost(why))

    def answered(self, agent_id: str, results: list[p.StartResult]) -> None:
        """An agent's answer to starts: those already started are running now, not
        once their `proc.started` event comes (which then changes nothing)."""
        started = False
        for result in results:
            if result.pid is None or result.pgid is None or result.start_time is None:
                continue
            run = self.engine.run_for(result.proc_id)
            if run is not None:
                event = p.ProcStarted(result.proc_id, result.pid, result.pgid, result.start_time)
                self._started(agent_id, run, event)
                started = True
        if started:
            with contextlib.suppress(Unavailable):  # kept, and written with the next commit
                self.engine.commit()

    def _started(self, agent_id: str, run: Run, event: p.ProcStarted) -> None:
        if run.state != State.STARTING:
            return  # already running: the start answer or an earlier event said so
        self.engine.apply(run, lifecycle.Started(f"running as pid {event.pid}"))
        self.engine.procs.started(run.run_id, event.start_time)
        self.engine.meta(
            run.run_id,
            pid=event.pid,
            pgid=event.pgid,
            start_time=event.start_time,
            agent_id=agent_id,
        )

    def _output(self, run: Run, stream: int, offset: int, data: bytes) -> None:
        known = self.engine.procs.output_length(run.run_id, stream)
        end = offset + len(data)
        if end <= known:
            return  # a duplicate
        if offset > known:
            # Events arrive in sequence, so a jump is the agent leaving out the middle
            # of an output over the cap: the head and the tail are kept.
            name = "stderr" if stream == STDERR else "output"
            self.engine.meta(run.run_id, **{f"{name}_omitted": [known, offset]})
            self.engine.note(run.run_id, f"{name} over the cap: bytes {known}-{offset} not kept")
            known = offset
        self.engine.add_output(run.run_id, stream, known, data[known - offset :])

    def _signaled(self, run: Run, event: p.ProcSignaled) -> None:
        engine = self.engine
        engine.note(run.run_id, f"agent sent {signal_name(event.signal)} ({event.reason})")
        ctx = engine.procs.stop_context(run.run_id)
        if event.reason == "timeout":
            engine.procs.set_stop_context(
                run.run_id, StopContext(True, event.signal, True, ctx.escalated)
            )
            engine.meta(run.run_id, timed_out=True)
            if run.state == State.RUNNING:
                engine.apply(run, lifecycle.TimedOut())
        elif event.reason == "escalation":
            engine.procs.set_stop_context(
                run.run_id,
                StopContext(ctx.stop_requested, ctx.stop_signal, ctx.timed_out, True),
            )

    async def _exited(self, agent_id: str, run: Run, event: p.ProcExited) -> None:
        engine = self.engine
        cap = run.program.output_max if isinstance(run.program, BoundProcess) else None
        for stream, length in ((STDOUT, event.output_length), (STDERR, event.stderr_length)):
            # What the agent's events left out, within the cap (an older agent sent
            # over it while the program ran).
            for start, stop in p.kept(length, length if cap is None else cap):
                start = max(start, engine.procs.output_length(run.run_id, stream))
                if stop <= start:
                    continue
                try:
                    data = await engine.fetch_output(agent_id, event.proc_id, start, stop, stream)
                    self._output(run, stream, start, data)
                except ApsisError as exc:
                    engine.note(run.run_id, f"could not fetch the rest of the output: {exc}")
        run = engine.runs.get(run.run_id, run)
        if run.state == State.STARTING:
            run = engine.apply(run, lifecycle.Started("running"))
        state, message = outcome(event.exit, engine.procs.stop_context(run.run_id))
        exit = event.exit
        # Both ends by the agent's clock (the server's `running` time comes later).
        started = engine.procs.start_time(run.run_id)
        if started is None:  # started before this server did
            started = engine.store.meta(run.run_id).get("start_time")
        if started is None:  # no start reported at all: the server's time, then
            started = run.times.get("running")
        engine.meta(
            run.run_id,
            exit_code=exit.exit_code,
            signal=signal_name(exit.signal) if exit.signal is not None else None,
            core_dump=exit.core_dump,
            rusage=exit.rusage,
            end_time=exit.end_time,
            elapsed=(exit.end_time - started) if started is not None else None,
            output_length=event.output_length,
            **({"stderr_length": event.stderr_length} if event.stderr_length else {}),
        )
        if run.state in (State.RUNNING, State.STOPPING):
            ended = lifecycle.Succeeded if state == State.SUCCESS else lifecycle.Failed
            engine.apply(run, ended(message))
