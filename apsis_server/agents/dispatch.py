"""The queue of requests for one agent: starts in batches, commands in order.

Starts are batched: whatever the engine queued since the last request goes out
in one `POST /procs`. Commands are retried with jittered backoff while the agent
is unreachable; a run waits in `starting` meanwhile, and since the agent starts
a proc id at most once, a repeated start is harmless. A start the agent can never
take (it cannot be encoded, is over the agent's size limit, or is refused as
malformed) is not retried: its batch is split until that start stands alone, it
is refused, and the rest go on, so one bad run never holds up another.

A start carries the agent's event sequence it was first sent to (`instance`): an
agent whose state was reset since, in another sequence, refuses it, as it may
have started the program before (the run ends `error`, never started twice).
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import itertools
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from apsis_common import protocol as p
from apsis_common.errors import BadInput, Conflict, NotFound, Unavailable
from apsis_common.http11 import never_sent
from apsis_server.agents.client import AgentClient
from apsis_server.agents.reports import Reports

log = logging.getLogger(__name__)


async def _start(client: AgentClient, batch: list[p.StartProc]) -> list[p.StartResult]:
    """The agent's answers to a batch of starts. One it can never take (BadInput)
    is answered `refused` alone: the batch is halved until it stands alone, so the
    others cost a few more requests, never a retry loop."""
    try:
        return list(await client.start(batch))
    except BadInput as exc:
        if len(batch) == 1:
            log.warning("agent refuses start %s: %s", batch[0].proc_id, exc)
            return [p.StartResult(batch[0].proc_id, p.StartStatus.REFUSED, f"start refused: {exc}")]
    half = len(batch) // 2
    return await _start(client, batch[:half]) + await _start(client, batch[half:])


class CommandKind(enum.StrEnum):
    STOP = "stop"
    SIGNAL = "signal"
    DELETE = "delete"


@dataclass(frozen=True)
class Command:
    """A non-start request for one process: stop, signal or delete."""

    kind: CommandKind
    proc_id: str
    stop: p.StopRequest | None = None
    signal: int = 0


# Start batches in flight to one agent at once.
STARTERS = 2
# Starts in one request: small enough that an agent starts the first programs of a
# burst while the server still sends the rest.
START_BATCH = 100


class Dispatcher:
    """The queue of requests for one agent, sent by one task."""

    def __init__(self, agent_id: str) -> None:
        self.agent_id = agent_id
        self.client: AgentClient | None = None
        self._starts: dict[str, p.StartProc] = {}
        self._sending: set[str] = set()  # proc ids of starts in a batch in flight
        # Starts withdrawn while in flight: never sent again, whatever that batch's fate.
        self._withdrawn: set[str] = set()
        # Per proc id: the agent's event sequence its start was first sent to.
        self._first: dict[str, str] = {}
        self._commands: list[Command] = []
        self._wake = asyncio.Event()

    def start(self, proc: p.StartProc) -> None:
        self._starts[proc.proc_id] = proc
        self._wake.set()

    def command(self, command: Command) -> None:
        self._commands.append(command)
        self._wake.set()

    def connected(self, client: AgentClient) -> None:
        self.client = client
        self._wake.set()

    async def run(self, reports: Reports) -> None:
        """Send whatever is queued, forever; back off while the agent is unreachable;
        what the agent answers to starts goes to `reports`. Starts go out in up to
        `STARTERS` batches at once: a submission is answered once its agent accepts
        the start, so a batch waiting behind another's round trip is latency every
        client pays. Commands go out one at a time, in order."""

        async def starts(client: AgentClient) -> None:
            await self._send_starts(client, reports)

        async with asyncio.TaskGroup() as tasks:
            for _ in range(STARTERS):
                tasks.create_task(self._loop(starts))
            tasks.create_task(self._loop(self._send_commands))

    async def _loop(self, send: Callable[[AgentClient], Awaitable[None]]) -> None:
        delay = 0.05
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self.client is None:
                continue
            try:
                await send(self.client)  # until nothing of its kind is left unsent
                delay = 0.05
            except Exception as exc:  # never the end of sending to this agent
                if not isinstance(exc, Unavailable):
                    log.exception("agent %s: sending failed", self.agent_id)
                log.warning("agent %s: %s; retrying in %.1fs", self.agent_id, exc, delay)
                await asyncio.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, 5.0)
                self._wake.set()  # try again

    async def _send_starts(self, client: AgentClient, reports: Reports) -> None:
        while batch := self._unsent_batch():
            fresh = [proc.proc_id for proc in batch if proc.proc_id not in self._first]
            batch = [self._stamped(proc, client.instance) for proc in batch]
            ids = [proc.proc_id for proc in batch]
            self._sending.update(ids)
            try:
                results = await _start(client, batch)
            except Unavailable as exc:
                if never_sent(exc):
                    for proc_id in fresh:  # no agent can have had them
                        self._first.pop(proc_id, None)
                raise
            finally:
                self._sending.difference_update(ids)
                for proc_id in self._withdrawn.intersection(ids):
                    self._starts.pop(proc_id, None)
                self._withdrawn.difference_update(ids)
            for proc_id in ids:
                self._starts.pop(proc_id, None)
            for result in results:
                if result.status == p.StartStatus.REFUSED:
                    reports.refused(result.proc_id, result.error or "refused by the agent")
            accepted = [r for r in results if r.status != p.StartStatus.REFUSED]
            reports.accepted(self.agent_id, accepted)

    def _stamped(self, proc: p.StartProc, instance: str) -> p.StartProc:
        """The start as it goes now: with the sequence it first went to (this one,
        the first time; none when the agent does not say)."""
        first = self._first.setdefault(proc.proc_id, proc.instance or instance)
        return proc if first == proc.instance else dataclasses.replace(proc, instance=first)

    def withdraw(self, proc_id: str) -> None:
        """Drop a start: its run has left `starting`. One not yet sent is never sent;
        one in flight goes on, and is not sent again should that request fail (the
        agent may have run it, reported it and removed its directory since: a
        second request would start it again)."""
        self._first.pop(proc_id, None)
        if proc_id in self._sending:
            self._withdrawn.add(proc_id)
        else:
            self._starts.pop(proc_id, None)

    def _unsent_batch(self) -> list[p.StartProc]:
        """The oldest starts not in flight, up to a batch. Those in flight are the
        oldest, so this looks at no more than `STARTERS` batches, however many wait."""
        unsent = (s for proc_id, s in self._starts.items() if proc_id not in self._sending)
        return list(itertools.islice(unsent, START_BATCH))

    async def _send_commands(self, client: AgentClient) -> None:
        while self._commands:
            command = self._commands[0]
            try:
                if command.kind == CommandKind.STOP:
                    await client.stop(command.proc_id, command.stop or p.StopRequest())
                elif command.kind == CommandKind.SIGNAL:
                    await client.signal(command.proc_id, command.signal)
                elif command.kind == CommandKind.DELETE:
                    await client.delete(command.proc_id)
            except (NotFound, Conflict, BadInput) as exc:
                log.info("agent %s: %s %s: %s", self.agent_id, command.kind, command.proc_id, exc)
            self._commands.pop(0)
