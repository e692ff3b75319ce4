"""Server metrics: Prometheus text at `GET /metrics` and the `Stats` of `GET /api/v1/stats`.

Counters and histograms move as the engine commits: `Metrics.observe` is an
engine listener, so it sees each committed `Changes` batch once. Gauges (runs by
state, agents, store size) are read when scraped. A small task owned by the
server's task group measures event-loop lag: it sleeps a fixed interval and
records how much later than asked it woke.

A run's transitions are read from the batch's log entries (one per transition,
with the state entered); the state left is the one entered just before in the
run's `times`, which lists the states in the order they were entered.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import contextlib
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from apsis_common import __version__
from apsis_common.errors import Unavailable
from apsis_common.states import UNFINISHED, State
from apsis_server.agents.conn import AgentState
from apsis_server.agents.registry import Registry
from apsis_server.api.checks import Checker
from apsis_server.api.views import LoopLatency, ScheduleLateness, Stats, time_text
from apsis_server.core.checks import counts
from apsis_server.core.runs import Run
from apsis_server.engine.engine import Engine
from apsis_server.leadership import Leadership
from apsis_server.store.base import Changes

LATENESS_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
AGENT_STATES = (
    AgentState.CONNECTING,
    AgentState.CONNECTED,
    AgentState.DISCONNECTED,
    AgentState.STOPPED,
)
# Unfinished states in lifecycle order, for stable output.
RUN_STATES = tuple(s for s in State if s in UNFINISHED and s != State.NEW)
LOOP_INTERVAL = 0.25
RECENT = 240  # loop-lag samples kept for the recent max and mean: one minute


class Histogram:
    """Cumulative-bucket histogram, as Prometheus wants it."""

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def lines(self) -> list[str]:
        """The samples, each without the family name: `_bucket{le="0.1"} 3`, `_sum`, `_count`."""
        out, total = [], 0
        for bound, count in zip((*self.buckets, math.inf), self.counts, strict=True):
            total += count
            le = "+Inf" if bound == math.inf else _number(bound)
            out.append(f'_bucket{{le="{le}"}} {total}')
        out.append(f"_sum {_number(self.sum)}")
        out.append(f"_count {self.count}")
        return out


def _number(value: float) -> str:
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(pairs: Mapping[str, str]) -> str:
    return "{" + ",".join(f'{k}="{_label(v)}"' for k, v in pairs.items()) + "}"


def _file_size(path: Path) -> int:
    total = 0
    for suffix in ("", "-wal"):
        with contextlib.suppress(OSError):
            total += os.stat(f"{path}{suffix}").st_size
    return total


def _order(run: Run) -> list[str]:
    """The states the run entered, oldest first (a stable sort keeps ties in entry order)."""
    return [name for name, _ in sorted(run.times.items(), key=lambda item: item[1])]


def _previous(order: list[str], to: str) -> str:
    if to not in order:
        return State.NEW.value if to == State.SCHEDULED.value else "unknown"
    index = order.index(to)
    return order[index - 1] if index > 0 else State.NEW.value


class Metrics:
    """What the server measures about itself; built by `build_app`."""

    def __init__(
        self,
        engine: Engine,
        registry: Registry,
        store_path: Path | None,
        leadership: Leadership,
        checker: Checker,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`store_path`: the SQLite file (None: the store tells its own size)."""
        self.engine = engine
        self.registry = registry
        self.leadership = leadership
        self.checker = checker
        self.store_path = store_path
        self.clock = clock
        self.start_time = clock()
        self.transitions: collections.Counter[tuple[str, str]] = collections.Counter()
        self.commits = 0
        self.lateness = Histogram(LATENESS_BUCKETS)
        self.loop_lag = Histogram(LAG_BUCKETS)
        self.recent_lag: collections.deque[float] = collections.deque(maxlen=RECENT)
        self.event_lag = Histogram(LAG_BUCKETS)
        self.webhook_time = Histogram(LAG_BUCKETS)
        self.webhook_requests: collections.Counter[str] = collections.Counter()
        engine.subscribe(self.observe)

    # -- what moves the counters --------------------------------------------------

    def observe(self, changes: Changes) -> None:
        """An engine listener: count the batch's transitions, lateness and event lag."""
        self.commits += 1
        orders: dict[str, list[str]] = {}
        for entry in changes.log:
            if entry.state is None:
                continue
            run = changes.runs.get(entry.run_id)
            order = orders.get(entry.run_id)
            if order is None:
                order = orders[entry.run_id] = _order(run) if run is not None else []
            self.transitions[(_previous(order, entry.state.value), entry.state.value)] += 1
            if entry.state == State.RUNNING and run is not None:
                running, due = run.times.get("running"), run.schedule_time
                if running is not None and due is not None:
                    self.lateness.observe(max(0.0, running - due))
        if changes.meta:
            self._event_lag(changes.meta.values())

    def _event_lag(self, metas: Iterable[Mapping[str, Any]]) -> None:
        now = self.clock()
        for meta in metas:
            for key in ("start_time", "end_time"):
                value = meta.get(key)
                if isinstance(value, int | float) and math.isfinite(value):
                    self.event_lag.observe(max(0.0, now - value))

    def webhook_done(self, seconds: float, status: int) -> None:
        self.webhook_time.observe(seconds)
        self.webhook_requests[str(status)] += 1

    async def run(self, interval: float = LOOP_INTERVAL) -> None:
        """Measure event-loop lag, forever."""
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(interval)
            lag = max(0.0, loop.time() - start - interval)
            self.loop_lag.observe(lag)
            self.recent_lag.append(lag)

    # -- reading ----------------------------------------------------------------------

    def runs_by_state(self) -> dict[str, int]:
        counts = dict.fromkeys((s.value for s in RUN_STATES), 0)
        for run in self.engine.runs.values():
            counts[run.state.value] = counts.get(run.state.value, 0) + 1
        return counts

    def agents_by_state(self) -> dict[AgentState, int]:
        counts = dict.fromkeys(AGENT_STATES, 0)
        for conn in self.registry.agents.values():
            counts[conn.state] = counts.get(conn.state, 0) + 1
        return counts

    def store_bytes(self) -> int:
        if self.store_path is not None:
            return _file_size(self.store_path)
        try:
            return self.engine.store.size()
        except Unavailable:
            return 0

    def text(self) -> str:
        """Everything, in the Prometheus text exposition format (0.0.4)."""
        now = self.clock()
        version = _labels({"version": __version__})
        lag_max = max(self.recent_lag, default=0.0)
        transitions = [
            f"{_labels({'from': a, 'to': b})} {n}" for (a, b), n in sorted(self.transitions.items())
        ]
        families = [
            ("build_info", "gauge", "The server version.", [f"{version} 1"]),
            (
                "start_time_seconds",
                "gauge",
                "When the server started (epoch seconds).",
                [f" {_number(self.start_time)}"],
            ),
            (
                "uptime_seconds",
                "gauge",
                "Seconds since the server started.",
                [f" {_number(now - self.start_time)}"],
            ),
            ("jobs", "gauge", "Jobs loaded.", [f" {len(self.engine.jobs)}"]),
            (
                "runs",
                "gauge",
                "Unfinished runs by state.",
                [f"{_labels({'state': s})} {n}" for s, n in self.runs_by_state().items()],
            ),
            (
                "run_transitions_total",
                "counter",
                "Run transitions committed since the server started, by state left and entered.",
                transitions,
            ),
            (
                "store_commits_total",
                "counter",
                "Change batches committed to the store.",
                [f" {self.commits}"],
            ),
            (
                "schedule_lateness_seconds",
                "histogram",
                "From a run's schedule time to it running.",
                self.lateness.lines(),
            ),
            (
                "event_loop_lag_seconds",
                "histogram",
                f"How late the event loop wakes from a {LOOP_INTERVAL}s sleep.",
                self.loop_lag.lines(),
            ),
            (
                "event_loop_lag_max_seconds",
                "gauge",
                "The largest event-loop lag in the last minute.",
                [f" {_number(lag_max)}"],
            ),
            (
                "agents",
                "gauge",
                "Agents by connection state.",
                [f"{_labels({'state': s})} {n}" for s, n in self.agents_by_state().items()],
            ),
            (
                "agent_heartbeat_age_seconds",
                "gauge",
                "Seconds since each agent was last heard from.",
                self._heartbeat_lines(now),
            ),
            (
                "agent_event_lag_seconds",
                "histogram",
                "From a process starting or exiting on its agent to the server committing it.",
                self.event_lag.lines(),
            ),
            (
                "webhook_duration_seconds",
                "histogram",
                "From an agent's event batch arriving to its ack, sent after the commit.",
                self.webhook_time.lines(),
            ),
            (
                "webhook_requests_total",
                "counter",
                "Agent webhook requests by status.",
                [f"{_labels({'status': s})} {n}" for s, n in sorted(self.webhook_requests.items())],
            ),
            (
                "store_bytes",
                "gauge",
                "Size of the store (SQLite: file and WAL; PostgreSQL: its tables).",
                [f" {self.store_bytes()}"],
            ),
            (
                "store_writable",
                "gauge",
                "1 if the last store write succeeded; 0 while changes wait to be written.",
                [f" {0 if self.engine.store_error else 1}"],
            ),
            (
                "check_findings",
                "gauge",
                "Findings of the latest sanity check (GET /api/v1/checks), by check and severity.",
                [
                    f"{_labels({'check': c, 'severity': v})} {n}"
                    for (c, v), n in counts(self.checker.findings).items()
                ],
            ),
            *self._leadership_families(),
        ]
        out: list[str] = []
        for name, kind, help_text, samples in families:
            out += [f"# HELP apsis_{name} {help_text}", f"# TYPE apsis_{name} {kind}"]
            # Histogram samples carry their own suffix (`_bucket{...}`, `_sum`, `_count`).
            out += [f"apsis_{name}{sample}" for sample in samples]
        return "\n".join(out) + "\n"

    def _heartbeat_lines(self, now: float) -> list[str]:
        lines = []
        for conn in self.registry.agents.values():
            if conn.last_heartbeat is not None:
                labels = _labels({"agent": conn.agent_id, "host": conn.host})
                lines.append(f"{labels} {_number(max(0.0, now - conn.last_heartbeat))}")
        return lines

    def _leadership_families(self) -> list[tuple[str, str, str, list[str]]]:
        leadership = self.leadership
        left = leadership.seconds_left()
        lease = (
            []
            if left is None
            else [
                (
                    "lease_seconds_left",
                    "gauge",
                    "Seconds until the leader would stop acting without a renewal (0 standing by).",
                    [f" {_number(left)}"],
                )
            ]
        )
        return [
            (
                "leader",
                "gauge",
                "1 while this server leads (holds the lease), 0 while it stands by.",
                [f" {1 if leadership.leading else 0}"],
            ),
            (
                "leader_epoch",
                "gauge",
                "The epoch this server leads under (-1 while it stands by).",
                [f" {leadership.epoch if leadership.epoch is not None else -1}"],
            ),
            *lease,
        ]

    def stats(self) -> Stats:
        """The answer of `GET /api/v1/stats`."""
        now = self.clock()
        recent = list(self.recent_lag)
        return Stats(
            version=__version__,
            start_time=time_text(self.start_time),
            uptime=now - self.start_time,
            jobs=len(self.engine.jobs),
            runs=self.runs_by_state(),
            runs_total=self.engine.store.max_run_number(),
            transitions=sum(self.transitions.values()),
            agents=self.agents_by_state(),
            loop_latency=LoopLatency(
                last=recent[-1] if recent else None,
                max=max(recent) if recent else None,
                mean=sum(recent) / len(recent) if recent else None,
            ),
            schedule_lateness=ScheduleLateness(
                count=self.lateness.count,
                mean=self.lateness.sum / self.lateness.count if self.lateness.count else None,
            ),
            store_bytes=self.store_bytes(),
            store_error=self.engine.store_error,
        )


class WebhookTiming:
    """ASGI middleware timing the agent webhook: arrival to the ack's first byte."""

    def __init__(self, app: ASGIApp, metrics: Metrics, path: str) -> None:
        self.app = app
        self.metrics = metrics
        self.path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()

        async def timed(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.metrics.webhook_done(time.perf_counter() - start, int(message["status"]))
            await send(message)

        await self.app(scope, receive, timed)


def _metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


async def metrics_endpoint(request: Request) -> Response:
    """`GET /metrics`."""
    return PlainTextResponse(
        _metrics(request).text(), media_type="text/plain; version=0.0.4; charset=utf-8"
    )
