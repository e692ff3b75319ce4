"""The websocket routes: each drains one subscriber's queue into its socket."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from apsis_server.api.feeds.fanout import Feeds
from apsis_server.api.feeds.messages import output_message
from apsis_server.api.feeds.subscribers import Mark, RunSubscriber, Subscriber, dumps
from apsis_server.api.tokens import WS_PROTOCOL
from apsis_server.store.base import RunStore, output_name

log = logging.getLogger(__name__)

# Close codes: 1000 normal (the run finished), 1013 try again later (too slow).
CLOSE_FINISHED = 1000
CLOSE_TOO_SLOW = 1013
CLOSE_BAD_REQUEST = 4400
CLOSE_NO_RUN = 4404

OUTPUT_CHUNK = 64 * 1024


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
            data = self.store.output(sub.run_id, sub.sent, stop, sub.name)
            if not data:
                break
            start, sub.sent = sub.sent, sub.sent + len(data)
            await self.send(dumps(output_message(start, data)))

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


async def _accept(websocket: WebSocket) -> None:
    # A browser that offers subprotocols (its token rides in one) fails the
    # connection unless the server picks one of them.
    offered = websocket.scope.get("subprotocols", ())
    await websocket.accept(subprotocol=WS_PROTOCOL if WS_PROTOCOL in offered else None)


async def summary_feed(websocket: WebSocket) -> None:
    """`/api/v1/summary`: a snapshot, then one message per change."""
    feeds: Feeds = websocket.app.state.feeds
    await _accept(websocket)
    sub, snapshot = feeds.summary.subscribe()
    sub.push(dumps(snapshot))  # first in the queue, before any change after it
    try:
        summary = feeds.summary
        await _serve(websocket, feeds, sub, [_ticking(summary.poll, summary.poll_period)])
    finally:
        feeds.unsubscribe(sub)


async def run_feed(websocket: WebSocket) -> None:
    """`/api/v1/runs/{run_id}/updates`: the run's state, then its changes until it finishes."""
    feeds: Feeds = websocket.app.state.feeds
    run_id = str(websocket.path_params["run_id"])
    if run_id.isdigit():
        run_id = "r" + run_id
    init = websocket.query_params.get("init", "true").lower() not in ("false", "0", "no")
    await _accept(websocket)
    try:
        offset = int(websocket.query_params.get("offset", "0"))
    except ValueError:
        await _close(websocket, CLOSE_BAD_REQUEST, "offset must be an integer")
        return
    try:
        name = output_name(websocket.query_params.get("name"))
    except ValueError as exc:
        await _close(websocket, CLOSE_BAD_REQUEST, str(exc))
        return
    try:
        sub = feeds.runs.subscribe(run_id, init, offset, name)
    except LookupError:
        await _close(websocket, CLOSE_NO_RUN, f"no run {run_id!r}")
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
