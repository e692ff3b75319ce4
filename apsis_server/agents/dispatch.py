"""Talking to agents: a signed HTTPS client, and a per-agent command queue.

Starts are batched: whatever the engine queued since the last request goes out
in one `POST /procs`. Commands are retried with jittered backoff while the agent
is unreachable; a run waits in `starting` meanwhile, and since the agent starts
a proc id at most once, a repeated start is harmless. A start the agent can never
take (it cannot be encoded, is over the agent's size limit, or is refused as
malformed) is not retried: its batch is split until that start stands alone, it
is refused, and the rest go on, so one bad run never holds up another.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlencode

from apsis_common import codec
from apsis_common import protocol as p
from apsis_common.auth import Key, sign
from apsis_common.errors import AuthError, BadInput, Conflict, NotFound, Unavailable
from apsis_common.tls import client_context
from apsis_server.agents.http11 import Http11Client

log = logging.getLogger(__name__)
T = TypeVar("T")

_STATUS_ERRORS: dict[int, type[Exception]] = {
    400: BadInput,
    401: AuthError,
    404: NotFound,
    409: Conflict,
    413: BadInput,
    503: Unavailable,
}


class AgentClient:
    """Signed msgpack requests to one agent over verified HTTPS."""

    def __init__(self, base_url: str, key: Key, ca_pem: str, timeout: float = 30.0) -> None:
        self.base_url = base_url
        self._key = key
        self._http = Http11Client(base_url, client_context(ca_pem), timeout)

    async def close(self) -> None:
        await self._http.close()

    async def request(self, method: str, target: str, message: Any = None) -> bytes:
        try:
            body = b"" if message is None else codec.encode(message)
        except (ValueError, TypeError, OverflowError) as exc:  # UnicodeEncodeError too
            raise BadInput(f"cannot be sent: {exc}") from None
        if len(body) > p.MAX_REQUEST_BYTES:
            raise BadInput(
                f"cannot be sent: {len(body)} bytes, over the agent's limit of "
                f"{p.MAX_REQUEST_BYTES}"
            )
        headers = sign(self._key, method, target, body)
        headers["content-type"] = p.MSGPACK
        try:
            answer = await self._http.request(method, target, headers, body)
        except (OSError, EOFError, ValueError, asyncio.LimitOverrunError) as exc:
            raise Unavailable(f"agent at {self.base_url} unreachable: {exc!r}") from exc
        except RuntimeError as exc:  # this client was closed: the agent was reconnected
            raise Unavailable(f"agent at {self.base_url}: {exc}") from exc
        if answer.status >= 400:
            error = _STATUS_ERRORS.get(answer.status, Unavailable)
            raise error(f"agent answered {answer.status}: {answer.text[:200]}")
        return answer.body

    async def call(self, cls: type[T], method: str, target: str, message: Any = None) -> T:
        return codec.decode(cls, await self.request(method, target, message))

    async def info(self) -> p.AgentInfo:
        return await self.call(p.AgentInfo, "GET", "/agent")

    async def start(self, procs: list[p.StartProc]) -> tuple[p.StartResult, ...]:
        answer = await self.call(p.StartResults, "POST", "/procs", p.StartBatch(tuple(procs)))
        return answer.results

    async def procs(self) -> tuple[p.ProcSummary, ...]:
        return (await self.call(p.ProcList, "GET", "/procs")).procs

    async def output(self, proc_id: str, start: int, stop: int) -> bytes:
        query = urlencode({"start": start, "stop": stop})
        return await self.request("GET", f"/procs/{proc_id}/output?{query}")

    async def stop(self, proc_id: str, request: p.StopRequest) -> None:
        await self.request("POST", f"/procs/{proc_id}/stop", request)

    async def signal(self, proc_id: str, signal: int) -> None:
        await self.request("POST", f"/procs/{proc_id}/signal", p.SignalRequest(signal))

    async def delete(self, proc_id: str) -> None:
        await self.request("DELETE", f"/procs/{proc_id}")


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


@dataclass(frozen=True)
class Command:
    """A non-start request for one process: stop, signal or delete."""

    kind: str
    proc_id: str
    stop: p.StopRequest | None = None
    signal: int = 0


StartRefused = Callable[[str, str], None]
StartsAccepted = Callable[[list[p.StartResult]], None]
# Start batches in flight to one agent at once.
STARTERS = 2
# Starts in one request: small enough that an agent starts the first programs of a
# burst while the server still sends the rest.
START_BATCH = 100


class Dispatcher:
    """The queue of requests for one agent, sent by one task."""

    def __init__(
        self,
        agent_id: str,
        on_refused: StartRefused,
        on_accepted: StartsAccepted = lambda results: None,
    ) -> None:
        self.agent_id = agent_id
        self.client: AgentClient | None = None
        self._on_refused = on_refused
        self._on_accepted = on_accepted
        self._starts: dict[str, p.StartProc] = {}
        self._sending: set[str] = set()  # proc ids of starts in a batch in flight
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

    async def run(self) -> None:
        """Send whatever is queued, forever; back off while the agent is unreachable.
        Starts go out in up to `STARTERS` batches at once: a submission is answered
        once its agent accepts the start, so a batch waiting behind another's round
        trip is latency every client pays. Commands go out one at a time, in order."""
        async with asyncio.TaskGroup() as tasks:
            for _ in range(STARTERS):
                tasks.create_task(self._loop(self._send_starts))
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

    async def _send_starts(self, client: AgentClient) -> None:
        while batch := self._unsent_batch():
            ids = [proc.proc_id for proc in batch]
            self._sending.update(ids)
            try:
                results = await _start(client, batch)
            finally:
                self._sending.difference_update(ids)
            for proc_id in ids:
                self._starts.pop(proc_id, None)
            for result in results:
                if result.status == p.StartStatus.REFUSED:
                    self._on_refused(result.proc_id, result.error or "refused by the agent")
            self._on_accepted([r for r in results if r.status != p.StartStatus.REFUSED])

    def withdraw(self, proc_id: str) -> None:
        """Drop a start not yet sent: its run has ended (one in flight goes on)."""
        if proc_id not in self._sending:
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
                if command.kind == "stop":
                    await client.stop(command.proc_id, command.stop or p.StopRequest())
                elif command.kind == "signal":
                    await client.signal(command.proc_id, command.signal)
                elif command.kind == "delete":
                    await client.delete(command.proc_id)
            except (NotFound, Conflict, BadInput) as exc:
                log.info("agent %s: %s %s: %s", self.agent_id, command.kind, command.proc_id, exc)
            self._commands.pop(0)
