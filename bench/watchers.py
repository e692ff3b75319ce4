"""P8: 50 websocket clients on /api/v1/summary while a P1 burst runs.

Runs only when the server has the feed (a websocket handshake on /api/v1/summary
succeeds); otherwise it reports "not available". The clients run in one thread of
the benchmark process with their own event loop. Whatever the message format, a
client "sees" a run finish when a message holds an object with that `run_id` and
a finished `state`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from typing import Any

import websockets
from websockets.sync.client import connect

from bench.live import FINISHED, LiveServer, live_server
from bench.report import Figure, at_least, at_most, median_figures
from bench.throughput import JOBS, burst, shape
from tests.harness import wait_for

CLIENTS = 50


def feed_url(server: LiveServer) -> str:
    return server.url.replace("http://", "ws://") + "/api/v1/summary"


def feed_available(server: LiveServer) -> bool:
    try:
        with connect(feed_url(server), open_timeout=5):
            return True
    except (OSError, websockets.exceptions.WebSocketException, TimeoutError):
        return False


def finished_runs(value: Any, into: set[str]) -> None:
    """Add to `into` the run ids of every finished run found anywhere in `value`."""
    if isinstance(value, dict):
        if isinstance(value.get("run_id"), str) and value.get("state") in FINISHED:
            into.add(value["run_id"])
        for item in value.values():
            finished_runs(item, into)
    elif isinstance(value, list):
        for item in value:
            finished_runs(item, into)


class Watchers:
    """`count` feed clients in a thread; `seen[i]` is what client i saw finish."""

    def __init__(self, url: str, count: int) -> None:
        self.url = url
        self.seen: list[set[str]] = [set() for _ in range(count)]
        self.errors: list[str] = []
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with contextlib.AsyncExitStack() as stack:
            sockets = [
                await stack.enter_async_context(websockets.connect(self.url, max_size=None))
                for _ in self.seen
            ]
            self._ready.set()
            async with asyncio.TaskGroup() as tasks:
                readers = [tasks.create_task(self._read(i, ws)) for i, ws in enumerate(sockets)]
                await self._stop.wait()
                for reader in readers:
                    reader.cancel()

    async def _read(self, i: int, ws: websockets.ClientConnection) -> None:
        try:
            async for message in ws:
                with contextlib.suppress(ValueError):
                    finished_runs(json.loads(message), self.seen[i])
        except websockets.exceptions.ConnectionClosed as exc:
            self.errors.append(f"client {i}: closed: {exc}")

    def __enter__(self) -> Watchers:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the feed clients did not connect within 30 s")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


def p8(quick: bool) -> list[Figure]:
    """P8: P1's throughput with and without 50 feed clients; every client sees every end."""
    s = shape(quick)
    with live_server("p8", JOBS) as server:
        server.launch()
        server.wait_agent()
        if not feed_available(server):
            return [Figure("P8", "feed /api/v1/summary", None, note="not available on this server")]
        burst(server, s.warmup, s.clients, "P8")
        alone, watched, complete = [], [], []
        for _ in range(s.repetitions):
            alone.append(burst(server, s.runs, s.clients, "P8"))
            figures, clients = _watched_burst(server, s.runs, s.clients)
            watched.append(figures)
            complete.append(clients)
    base = median_figures(alone)[0].value or 0.0
    with_feed = median_figures(watched)[0].value or 0.0
    drop = 100 * (1 - with_feed / base) if base else None
    return [
        Figure("P8", "runs/s without feed clients", base, "runs/s"),
        Figure("P8", f"runs/s with {CLIENTS} feed clients", with_feed, "runs/s"),
        Figure("P8", "throughput drop", drop, "%", at_most(20)),
        Figure(
            "P8", "clients that saw every finish", min(complete), f"of {CLIENTS}", at_least(CLIENTS)
        ),
    ]


def _watched_burst(server: LiveServer, runs: int, clients: int) -> tuple[list[Figure], int]:
    """A burst with the feed clients on; its figures and how many clients saw it all."""
    with Watchers(feed_url(server), CLIENTS) as w:
        figures = burst(server, runs, clients, "P8")
        ids = set(_run_ids(server, runs))
        with contextlib.suppress(AssertionError):
            wait_for(lambda: all(ids <= seen for seen in w.seen), 10, "every client")
    return figures, sum(ids <= seen for seen in w.seen)


def _run_ids(server: LiveServer, count: int) -> list[str]:
    runs = server.get(f"/runs?job_id=true&limit={count}")["runs"]
    return [r["run_id"] for r in runs]
