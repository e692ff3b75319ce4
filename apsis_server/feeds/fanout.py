"""The websocket feeds: fan-out of engine changes to live subscribers (docs/api.md).

Theory of operation. `Feeds` is one of the engine's listeners: after every
commit it turns the `Changes` batch into feed messages, serialises each once and
appends the same text to the bounded queue of every interested subscriber. It
never awaits and never touches a socket, so a slow client cannot slow the
engine. Each websocket handler owns a TaskGroup that drains its subscriber's
queue into the socket.

Output is not copied into queues: it is already durable in the store, so a run
subscriber's queue only holds a marker saying "there is more output" and its
handler reads the bytes from the store, chunk by chunk, at the client's pace.

A subscriber falls too far behind when its queue overflows or one send stays
blocked longer than `send_timeout` (the client is not reading). Its handler then
stops, closes the socket with code 1013 and a reason, and the client is
expected to reconnect, getting a fresh snapshot.

A subscriber is registered and its snapshot read in one synchronous step: every
commit before it is in the snapshot, every commit after it is in its queue.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import enum
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from apsis_common import __version__
from apsis_common.states import State
from apsis_common.times import format_time
from apsis_server.agents.registry import Registry
from apsis_server.core.jobs import Job
from apsis_server.engine import Engine
from apsis_server.jsonview import agent_json, job_json, log_json, run_json, upcoming
from apsis_server.store.base import Changes, RunFilter, RunStore

log = logging.getLogger(__name__)

# Close codes: 1000 normal (the run finished), 1013 try again later (too slow).
CLOSE_FINISHED = 1000
CLOSE_TOO_SLOW = 1013
CLOSE_BAD_REQUEST = 4400
CLOSE_NO_RUN = 4404

RECENT_RUNS = 200
OUTPUT_CHUNK = 64 * 1024
ACTIVE = (State.STARTING, State.RUNNING, State.STOPPING)


class Mark(enum.Enum):
    """Queue entries that are not messages."""

    OUTPUT = "output"  # the run has more output than was sent
    END = "end"  # the feed is over: close normally


def _dumps(message: Mapping[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"))


class Subscriber:
    """One client's bounded queue of serialised messages."""

    def __init__(self, max_messages: int, max_bytes: int) -> None:
        self._items: deque[str | Mark] = deque()
        self._bytes = 0
        self._max_messages = max_messages
        self._max_bytes = max_bytes
        self._ready = asyncio.Event()
        self.too_slow = asyncio.Event()
        self.reason = ""

    def push(self, item: str | Mark) -> None:
        """Queue a message; on overflow drop the queue and mark the subscriber. Never blocks."""
        if self.too_slow.is_set():
            return
        size = len(item) if isinstance(item, str) else 0
        # One message, however big (a snapshot), always fits in an empty queue.
        full = len(self._items) >= self._max_messages or self._bytes + size > self._max_bytes
        if full and self._items:
            self.drop(f"too slow: {len(self._items)} messages ({self._bytes} bytes) queued")
            return
        self._items.append(item)
        self._bytes += size
        self._ready.set()

    def drop(self, reason: str) -> None:
        """Give up on this subscriber: its handler closes the socket with `reason`."""
        self._items.clear()
        self._bytes = 0
        self.reason = reason
        self.too_slow.set()

    async def get(self) -> str | Mark:
        """The next queued item, waiting for one."""
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        item = self._items.popleft()
        if isinstance(item, str):
            self._bytes -= len(item)
        return item


class RunSubscriber(Subscriber):
    """A subscriber to one run: also where its output stands."""

    def __init__(self, run_id: str, max_messages: int, max_bytes: int) -> None:
        super().__init__(max_messages, max_bytes)
        self.run_id = run_id
        self.sent = 0  # output offset sent so far
        self.end = 0  # output length known to be in the store
        self.output_marked = False

    def more_output(self, end: int) -> None:
        """The store holds output up to `end`; queue one marker for it, not the bytes."""
        self.end = max(self.end, end)
        if not self.output_marked and self.end > self.sent:
            self.output_marked = True
            self.push(Mark.OUTPUT)


class Feeds:
    """The engine listener that fans changes out to websocket subscribers."""

    def __init__(
        self,
        engine: Engine,
        registry: Registry | None = None,
        *,
        max_messages: int = 20_000,
        max_bytes: int = 8 * 1024 * 1024,
        send_timeout: float = 3.0,
        poll_period: float = 1.0,
    ) -> None:
        self.engine = engine
        self.registry = registry
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.send_timeout = send_timeout
        self.poll_period = poll_period
        self._summary: set[Subscriber] = set()
        self._runs: dict[str, set[RunSubscriber]] = {}
        self._jobs_seen: Mapping[str, Job] = engine.jobs
        self._agents_seen: dict[str, tuple[Any, ...]] = {}
        self._last_poll = 0.0
        engine.listeners.append(self)

    # -- the listener: enqueue only -------------------------------------------

    def __call__(self, changes: Changes) -> None:
        """Called by the engine after each commit."""
        if self._summary:
            self._publish_summary(changes)
        if self._runs:
            self._publish_runs(changes)

    def _broadcast(self, message: Mapping[str, Any]) -> None:
        text = _dumps(message)
        for sub in self._summary:
            sub.push(text)

    def _publish_summary(self, changes: Changes) -> None:
        now = self.engine.clock()
        for run in changes.runs.values():
            self._broadcast({"type": "run", "run": run_json(run, now)})
        self._check_jobs()

    def _publish_runs(self, changes: Changes) -> None:
        logs: dict[str, list[dict[str, Any]]] = {}
        for entry in changes.log:
            if entry.run_id in self._runs:
                logs.setdefault(entry.run_id, []).append(log_json(entry))
        for run_id, entries in logs.items():
            self._to_run(run_id, {"type": "log", "entries": entries})
        for run_id, meta in changes.meta.items():
            if run_id in self._runs:
                self._to_run(run_id, {"type": "meta", "meta": meta})
        for run_id, offset, data in changes.output:
            for sub in self._runs.get(run_id, ()):
                sub.more_output(offset + len(data))
        now = self.engine.clock()
        for run in changes.runs.values():
            if run.run_id in self._runs:
                self._to_run(run.run_id, {"type": "run", "run": run_json(run, now)})
                if run.state.finished:
                    for sub in self._runs.pop(run.run_id):
                        sub.push(Mark.END)

    def _to_run(self, run_id: str, message: Mapping[str, Any]) -> None:
        text = _dumps(message)
        for sub in self._runs.get(run_id, ()):
            sub.push(text)

    # -- jobs and agents: compared, since nothing announces their changes -----

    def _check_jobs(self) -> None:
        jobs = self.engine.jobs
        if jobs is self._jobs_seen:
            return
        old, self._jobs_seen = self._jobs_seen, jobs
        now = self.engine.clock()
        for job_id, job in jobs.items():
            before = old.get(job_id)
            if before is None or (before is not job and before != job):
                self._broadcast({"type": "job", "job": job_json(job, upcoming(job, now))})
        for job_id in old.keys() - jobs.keys():
            self._broadcast({"type": "job_removed", "job_id": job_id})

    def agents(self) -> list[dict[str, Any]]:
        """Every agent, as `GET /api/v1/agents` shows them."""
        if self.registry is None:
            return []
        running: dict[str | None, int] = {}
        for run in self.engine.runs.values():
            if run.state in ACTIVE:
                running[run.agent_id] = running.get(run.agent_id, 0) + 1
        return [agent_json(c, running.get(c.agent_id, 0)) for c in self.registry.agents.values()]

    def poll(self) -> None:
        """Announce job and agent changes; cheap to call often (rate limited)."""
        now = time.monotonic()
        if now - self._last_poll < self.poll_period * 0.9 or not self._summary:
            return
        self._last_poll = now
        self._check_jobs()
        for agent in self.agents():
            if self._agents_seen.get(agent["agent_id"]) != _agent_key(agent):
                self._agents_seen[agent["agent_id"]] = _agent_key(agent)
                self._broadcast({"type": "agent", "agent": agent})

    # -- subscribing: register and read the snapshot in one synchronous step ---

    def subscribe_summary(self) -> tuple[Subscriber, dict[str, Any]]:
        """A new summary subscriber and its snapshot message."""
        sub = Subscriber(self.max_messages, self.max_bytes)
        engine = self.engine
        now = engine.clock()
        self._check_jobs()  # earlier subscribers hear of job changes before this snapshot
        jobs = [job_json(j, upcoming(j, now)) for j in sorted(engine.jobs.values(), key=_job_id)]
        recent = {r.run_id: r for r in engine.store.query(RunFilter(limit=RECENT_RUNS))}
        recent.update(engine.runs)
        agents = self.agents()
        for agent in agents:
            self._agents_seen.setdefault(agent["agent_id"], _agent_key(agent))
        self._summary.add(sub)
        snapshot = {
            "type": "snapshot",
            "version": __version__,
            "time": format_time(now),
            "jobs": jobs,
            "runs": [run_json(r, now) for r in recent.values()],
            "agents": agents,
        }
        return sub, snapshot

    def subscribe_run(self, run_id: str, init: bool, offset: int) -> RunSubscriber:
        """A new subscriber to one run, with its initial messages queued.

        A negative `offset` counts back from the end of the output. LookupError if
        there is no such run.
        """
        engine = self.engine
        run = engine.get(run_id)
        run_id = run.run_id
        sub = RunSubscriber(run_id, self.max_messages, self.max_bytes)
        length = engine.store.output_length(run_id)
        start = max(0, length + offset) if offset < 0 else min(offset, length)
        sub.sent = sub.end = start
        if init:
            store = engine.store
            sub.push(_dumps({"type": "run", "run": run_json(run, engine.clock())}))
            entries = [log_json(e) for e in store.log(run_id)]
            sub.push(_dumps({"type": "log", "entries": entries}))
            sub.push(_dumps({"type": "meta", "meta": store.meta(run_id)}))
            if start == length:
                sub.push(_dumps(_output_message(start, b"")))
        sub.more_output(length)
        if run.state.finished:
            sub.push(Mark.END)
        else:
            self._runs.setdefault(run_id, set()).add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self._summary.discard(sub)
        if isinstance(sub, RunSubscriber):
            subs = self._runs.get(sub.run_id)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._runs[sub.run_id]

    @property
    def subscribers(self) -> int:
        return len(self._summary) + sum(len(s) for s in self._runs.values())


def _job_id(job: Job) -> str:
    return job.job_id


def _agent_key(agent: Mapping[str, Any]) -> tuple[Any, ...]:
    # A heartbeat alone is not news; a state, version or load change is.
    return tuple(v for k, v in agent.items() if k != "last_heartbeat")


def _output_message(offset: int, data: bytes) -> dict[str, Any]:
    return {"type": "output", "offset": offset, "data": base64.b64encode(data).decode("ascii")}


# -- the websocket handlers -------------------------------------------------------


class _Sender:
    """Drains one subscriber into its socket, each send bounded in time."""

    def __init__(self, websocket: WebSocket, sub: Subscriber, store: RunStore, timeout: float):
        self.websocket = websocket
        self.sub = sub
        self.store = store
        self.timeout = timeout
        self.ended = asyncio.Event()

    async def send(self, text: str) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                await self.websocket.send_text(text)
        except TimeoutError:
            self.sub.drop(f"too slow: a send waited more than {self.timeout:g}s")
            await asyncio.Event().wait()  # the handler cancels us

    async def output(self, sub: RunSubscriber) -> None:
        sub.output_marked = False
        while sub.sent < sub.end:
            stop = min(sub.end, sub.sent + OUTPUT_CHUNK)
            data = self.store.output(sub.run_id, sub.sent, stop)
            if not data:
                break
            start, sub.sent = sub.sent, sub.sent + len(data)
            await self.send(_dumps(_output_message(start, data)))

    async def run(self) -> None:
        while True:
            item = await self.sub.get()
            if isinstance(item, str):
                await self.send(item)
            elif item is Mark.OUTPUT and isinstance(self.sub, RunSubscriber):
                await self.output(self.sub)
            elif item is Mark.END:
                self.ended.set()
                return


async def _until_disconnect(websocket: WebSocket) -> None:
    while (await websocket.receive())["type"] != "websocket.disconnect":
        pass  # clients have nothing to say; anything they send is ignored


async def _ticking(action: Callable[[], None], period: float) -> None:
    while True:
        action()
        await asyncio.sleep(period)


async def _serve(
    websocket: WebSocket,
    feeds: Feeds,
    sub: Subscriber,
    extra: list[Coroutine[Any, Any, None]],
) -> None:
    """Send the queue until the feed ends, the client goes away or falls too far
    behind; then close with the reason."""
    sender = _Sender(websocket, sub, feeds.engine.store, feeds.send_timeout)
    gone = False
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [
                group.create_task(sender.run()),
                group.create_task(_until_disconnect(websocket)),
                group.create_task(sub.too_slow.wait()),
                *(group.create_task(c) for c in extra),
            ]

            def stop_all(_: asyncio.Task[Any]) -> None:
                for task in tasks:
                    task.cancel()

            for task in tasks:
                task.add_done_callback(stop_all)
    except* (WebSocketDisconnect, OSError):
        gone = True
    if gone:
        return
    if sub.too_slow.is_set():
        log.warning("feed %s: disconnecting a subscriber: %s", websocket.url.path, sub.reason)
        await _close(websocket, CLOSE_TOO_SLOW, sub.reason)
    elif sender.ended.is_set():
        await _close(websocket, CLOSE_FINISHED, "run finished")


async def _close(websocket: WebSocket, code: int, reason: str) -> None:
    # The socket may be stuck behind a client that does not read: give up quickly;
    # the transport is closed when the handler returns.
    with contextlib.suppress(TimeoutError, WebSocketDisconnect, RuntimeError, OSError):
        async with asyncio.timeout(1.0):
            await websocket.close(code, reason)


async def summary_feed(websocket: WebSocket) -> None:
    """`/api/v1/summary`: a snapshot, then one message per change."""
    feeds: Feeds = websocket.app.state.feeds
    await websocket.accept()
    sub, snapshot = feeds.subscribe_summary()
    sub.push(_dumps(snapshot))  # first in the queue, before any change after it
    try:
        await _serve(websocket, feeds, sub, [_ticking(feeds.poll, feeds.poll_period)])
    finally:
        feeds.unsubscribe(sub)


async def run_feed(websocket: WebSocket) -> None:
    """`/api/v1/runs/{run_id}/updates`: the run's state, then its changes until it finishes."""
    feeds: Feeds = websocket.app.state.feeds
    run_id = str(websocket.path_params["run_id"])
    if run_id.isdigit():
        run_id = "r" + run_id
    init = websocket.query_params.get("init", "true").lower() not in ("false", "0", "no")
    await websocket.accept()
    try:
        offset = int(websocket.query_params.get("offset", "0"))
    except ValueError:
        await _close(websocket, CLOSE_BAD_REQUEST, "offset must be an integer")
        return
    try:
        sub = feeds.subscribe_run(run_id, init, offset)
    except LookupError:
        await _close(websocket, CLOSE_NO_RUN, f"no run {run_id}")
        return
    try:
        await _serve(websocket, feeds, sub, [])
    finally:
        feeds.unsubscribe(sub)


def feed_routes() -> list[WebSocketRoute]:
    """The websocket routes; they find the `Feeds` at `app.state.feeds`."""
    return [
        WebSocketRoute("/api/v1/summary", summary_feed),
        WebSocketRoute("/api/v1/runs/{run_id}/updates", run_feed),
    ]
