"""P8: 50 websocket clients on /api/v1/summary while a P1 burst runs.

Runs only when the server has the feed (a websocket handshake on /api/v1/summary
succeeds); otherwise it reports "not available". The clients run in one thread of
a process of their own with their own event loop. Whatever the message format, a
client "sees" a run finish when a message holds an object with that `run_id` and
a finished `state`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

import websockets
from websockets.sync.client import connect

from apsis_common.states import FINISHED
from bench.live import LiveServer, live_server
from bench.report import Figure, at_least, at_most, median_figures
from bench.stats import epoch, iso
from bench.throughput import JOBS, burst, shape

CLIENTS = 50
FOLLOWED = 10  # runs whose own update feed is followed during each watched burst
P8_JOBS = {**JOBS, "followed": JOBS["true"]}


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
    """`count` feed clients in a process of their own, with their own event loop.

    Not a thread of the benchmark: decoding every message for fifty clients held
    the GIL the submitting clients need, and the burst slowed for that alone.
    They still share the machine's two CPUs with the server, as they must.
    """

    def __init__(self, url: str, count: int) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_watch, args=(url, count, child), daemon=True)

    def __enter__(self) -> Watchers:
        self._process.start()
        if not self._conn.poll(30) or self._conn.recv() != "ready":
            self._process.kill()
            raise RuntimeError("the feed clients did not connect within 30 s")
        return self

    def complete(self, run_ids: set[str], timeout: float) -> int:
        """How many clients saw every run of `run_ids` finish (waiting up to `timeout` s)."""
        self._conn.send((sorted(run_ids), timeout))
        if not self._conn.poll(timeout + 30):
            raise RuntimeError("the feed clients did not answer")
        count: int = self._conn.recv()
        return count

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError):
            self._conn.send(None)
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()


def _watch(url: str, count: int, conn: Connection) -> None:
    """The clients' process: connect, say ready, answer `complete` questions until told to stop."""
    asyncio.run(_clients(url, count, conn))


async def _clients(url: str, count: int, conn: Connection) -> None:
    seen: list[set[str]] = [set() for _ in range(count)]
    news = asyncio.Event()  # set on every message any client reads
    loop = asyncio.get_running_loop()
    async with contextlib.AsyncExitStack() as stack:
        sockets = [
            await stack.enter_async_context(websockets.connect(url, max_size=None))
            for _ in range(count)
        ]
        readers = [
            asyncio.create_task(_read(ws, into, news))
            for ws, into in zip(sockets, seen, strict=True)
        ]
        conn.send("ready")
        while (question := await loop.run_in_executor(None, conn.recv)) is not None:
            ids, timeout = set(question[0]), question[1]
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    while not all(ids <= s for s in seen):
                        news.clear()
                        await news.wait()
            conn.send(sum(ids <= s for s in seen))
        for reader in readers:
            reader.cancel()


async def _read(ws: websockets.ClientConnection, into: set[str], news: asyncio.Event) -> None:
    with contextlib.suppress(websockets.exceptions.ConnectionClosed):
        async for message in ws:
            with contextlib.suppress(ValueError):
                finished_runs(json.loads(message), into)
            news.set()


def p8(quick: bool) -> list[Figure]:
    """P8: P1's throughput with and without 50 feed clients; every client sees every end."""
    s = shape(quick)
    with live_server("p8", P8_JOBS) as server:
        server.launch()
        server.wait_agent()
        if not feed_available(server):
            return [Figure("P8", "feed /api/v1/summary", None, note="not available on this server")]
        burst(server, s.warmup, s.clients, "P8")
        alone, watched, complete, told = [], [], [], []
        for _ in range(s.repetitions):
            alone.append(burst(server, s.runs, s.clients, "P8"))
            figures, clients, followed = _watched_burst(server, s.runs, s.clients)
            watched.append(figures)
            complete.append(clients)
            told.append(followed)
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
        Figure(
            "P8",
            "run feeds that told every transition",
            min(told),
            f"of {FOLLOWED}",
            at_least(FOLLOWED),
            "the worst repetition",
        ),
    ]


def _watched_burst(server: LiveServer, runs: int, clients: int) -> tuple[list[Figure], int, int]:
    """A burst with the feed clients on; its figures, how many clients saw it all, and
    how many followed runs' own feeds told every transition."""
    with Watchers(feed_url(server), CLIENTS) as w:
        due = iso(time.time() + 1.0)
        ids = [
            server.post("/runs", {"job_id": "followed", "time": due})["run"]["run_id"]
            for _ in range(FOLLOWED)
        ]
        follower = _Follower(server.url.replace("http://", "ws://"), ids)
        follower.start()
        if not follower.ready.wait(10):
            raise RuntimeError("the run feeds did not answer within 10 s")
        figures = burst(server, runs, clients, "P8")
        seen = w.complete(set(_run_ids(server, runs)), 10)
    follower.join(30)
    told = sum(
        follower.states.get(run_id) == _transitions(server.get(f"/runs/{run_id}")["run"])
        for run_id in ids
    )
    return figures, seen, told


def _transitions(run: dict[str, Any]) -> list[str]:
    """The states `run` went through from `scheduled` on, in order (from its times)."""
    order = sorted(run["times"].items(), key=lambda item: epoch(item[1]))
    states = [state for state, _ in order]
    return states[states.index("scheduled") :] if "scheduled" in states else states


class _Follower(threading.Thread):
    """Follows runs on their own update feeds; the states each told, in order."""

    def __init__(self, base: str, run_ids: list[str]) -> None:
        super().__init__(daemon=True)
        self.base = base
        self.run_ids = run_ids
        self.states: dict[str, list[str]] = {}
        self.ready = threading.Event()  # every feed told the run's state at subscribing

    def run(self) -> None:
        asyncio.run(self._all())

    async def _all(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(60):
                await asyncio.gather(*map(self._one, self.run_ids))

    async def _one(self, run_id: str) -> None:
        told = self.states.setdefault(run_id, [])
        url = f"{self.base}/api/v1/runs/{run_id}/updates"
        with contextlib.suppress(OSError, websockets.exceptions.WebSocketException):
            await self._read(await websockets.connect(url, max_size=None), told)

    async def _read(self, ws: websockets.ClientConnection, told: list[str]) -> None:
        async with ws:
            async for message in ws:
                update = json.loads(message)
                state = update["run"]["state"] if update.get("type") == "run" else None
                if state is not None and (not told or told[-1] != state):
                    told.append(state)
                    if all(self.states.values()) and len(self.states) == len(self.run_ids):
                        self.ready.set()


def _run_ids(server: LiveServer, count: int) -> list[str]:
    runs = server.get(f"/runs?job_id=true&limit={count}")["runs"]
    return [r["run_id"] for r in runs]
