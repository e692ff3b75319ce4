"""P1, P2: bursts of ad-hoc `/bin/true` runs submitted by concurrent API clients.

A burst: `clients` minimal HTTP/1.1 clients (one keep-alive connection each) share a counter
and POST /api/v1/runs until `runs` are submitted, each noting its wall-clock time
just before sending. The burst ends when no run of the job is unfinished (polled
every ≤ 100 ms with a one-row query); the figures come from the runs' own times:
runs/s = runs / (last finished time - first submit), submit→start = times.running
- the client's submit time (same machine, same clock).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

from apsis_common.states import FINISHED
from bench.live import (
    LiveServer,
    live_server,
    rss_mb,
    static_agent,
    wait_drained,
)
from bench.report import Figure, at_least, at_most, median_figures
from bench.stats import epoch, percentile

JOB = "true"
JOBS = {JOB: "program: {type: program, argv: [/bin/true]}\n"}
STATIC = "svc"
STATIC_JOBS = {JOB: f"program: {{type: program, argv: [/bin/true], host: {STATIC}}}\n"}


@dataclass(frozen=True)
class Submitted:
    run_id: str
    submit: float  # epoch seconds, just before the request was sent
    answered: float


@dataclass(frozen=True)
class Shape:
    """How big a burst is and how often it is repeated."""

    runs: int
    clients: int = 8
    repetitions: int = 3
    warmup: int = 20


def shape(quick: bool) -> Shape:
    return Shape(runs=50, repetitions=1, warmup=5) if quick else Shape(runs=500)


async def submit(url: str, count: int, clients: int, job: str = JOB) -> list[Submitted]:
    """Submit `count` runs of `job` from `clients` concurrent keep-alive clients."""
    counter = itertools.count()
    out: list[Submitted] = []
    target = urlsplit(url)
    body = json.dumps({"job_id": job}).encode()
    request = (
        f"POST /api/v1/runs HTTP/1.1\r\nHost: {target.netloc}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body

    async def client() -> None:
        reader, writer = await asyncio.open_connection(target.hostname, target.port)
        try:
            while next(counter) < count:
                sent = time.time()
                writer.write(request)
                status, answer = await _response(reader)
                if status != 201:
                    raise RuntimeError(f"submit answered {status}: {answer[:300]!r}")
                out.append(Submitted(json.loads(answer)["run"]["run_id"], sent, time.time()))
        finally:
            writer.close()

    async with asyncio.TaskGroup() as tasks:
        for _ in range(clients):
            tasks.create_task(client())
    return out


async def _response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """Status and body of one HTTP/1.1 response with a Content-Length.

    The clients are this small on purpose: they share the machine's two CPUs with
    the scheduler, and a general-purpose client (httpx) spent half a CPU here.
    """
    status = int((await reader.readline()).split()[1])
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, await reader.readexactly(length)


def fetch_runs(server: LiveServer, run_ids: set[str], query: str) -> dict[str, dict[str, Any]]:
    """The runs with these ids, paging newest first through `/runs?{query}`."""
    found: dict[str, dict[str, Any]] = {}
    before = ""
    oldest = min(int(r[1:]) for r in run_ids)
    while True:
        page = server.get(f"/runs?{query}&limit=1000{before}")
        for run in page["runs"]:
            if run["run_id"] in run_ids:
                found[run["run_id"]] = run
        nxt = page["next"]
        if nxt is None or int(nxt[1:]) <= oldest or len(found) == len(run_ids):
            return found
        before = f"&before={nxt}"


def burst(server: LiveServer, runs: int, clients: int, scenario: str) -> list[Figure]:
    """Submit one burst, wait for it to finish, and measure it."""
    submitted = asyncio.run(submit(server.url, runs, clients))
    wait_drained(server, 60 + runs / 10, f"&job_id={JOB}")
    found = fetch_runs(server, {s.run_id for s in submitted}, f"job_id={JOB}")
    return burst_figures(scenario, submitted, found)


def burst_figures(
    scenario: str, submitted: list[Submitted], runs: dict[str, dict[str, Any]]
) -> list[Figure]:
    first = min(s.submit for s in submitted)
    ends: list[float] = []
    latencies: list[float] = []
    succeeded = 0
    for s in submitted:
        run = runs[s.run_id]
        times = run["times"]
        if run["state"] in FINISHED:
            ends.append(epoch(times[run["state"]]))
        succeeded += run["state"] == "success"
        if "running" in times:
            latencies.append((epoch(times["running"]) - s.submit) * 1000)
    n = len(submitted)
    submit_span = max(s.answered for s in submitted) - first
    return [
        Figure(scenario, "runs/s end to end", n / (max(ends) - first), "runs/s"),
        Figure(scenario, "submit→start p50", percentile(latencies, 50), "ms"),
        Figure(scenario, "submit→start p99", percentile(latencies, 99), "ms"),
        Figure(scenario, "submissions/s (API alone)", n / submit_span, "req/s"),
        Figure(scenario, "runs succeeded", succeeded, f"of {n}", at_least(n)),
    ]


def _targets(figures: list[Figure], runs_per_s: float, p50_ms: float) -> list[Figure]:
    targets = {
        "runs/s end to end": at_least(runs_per_s),
        "submit→start p50": at_most(p50_ms),
    }
    out = []
    for f in figures:
        target = targets.get(f.name, f.target)
        out.append(Figure(f.scenario, f.name, f.value, f.unit, target, f.note))
    return out


def repeated(server: LiveServer, s: Shape, scenario: str, agent: int | None = None) -> list[Figure]:
    """Warm up, then the median figures of `s.repetitions` bursts, plus the RSS after."""
    burst(server, s.warmup, s.clients, scenario)
    reps = [burst(server, s.runs, s.clients, scenario) for _ in range(s.repetitions)]
    return median_figures(reps) + _rss_after(server, scenario, agent)


def _rss_after(server: LiveServer, scenario: str, agent: int | None = None) -> list[Figure]:
    figures = []
    for name, pid in (("server", server.pid), ("agent", agent or server.agent_pid())):
        rss = rss_mb(pid) if pid else None
        figures.append(Figure(scenario, f"{name} RSS after", rss, "MB"))
    return figures


P1_RUNS = 5  # runs of the whole scenario, each on a fresh server


def p1(quick: bool) -> list[Figure]:
    """P1: the default path, the server's own local agent. The median of 5 runs of the
    scenario, each a fresh server (warm-up, then one burst), and the slowest of them."""
    s = shape(quick)
    reps = []
    for _ in range(1 if quick else P1_RUNS):
        with live_server("p1", JOBS) as server:
            server.launch()
            server.wait_agent()
            burst(server, s.warmup, s.clients, "P1")
            reps.append(burst(server, s.runs, s.clients, "P1") + _rss_after(server, "P1"))
    figures = _targets(median_figures(reps), 550, 20)
    each = [rep[0].value or 0.0 for rep in reps]
    runs = ", ".join(f"{v:.0f}" for v in each)
    note = f"median of {len(reps)} fresh servers: {runs}" if len(reps) > 1 else "one run"
    slowest = Figure("P1", "runs/s, the slowest run", min(each), "runs/s", at_least(500))
    return [replace(figures[0], note=note), slowest, *figures[1:]]


def p2(quick: bool) -> list[Figure]:
    """P2: a separately started agent: a static one, and the local one attached to."""
    s = shape(quick)
    with live_server("p2", STATIC_JOBS) as server, static_agent(server, STATIC) as agent:
        server.launch()
        server.wait_agent(agent_id=f"static:{STATIC}")
        figures = repeated(server, s, "P2", agent)
    note = "static agent (apsis-agent serve), started before the server"
    figures = _targets(figures, 400, 30)
    head = figures[0]
    figures[0] = replace(head, note=f"{head.note}; {note}" if head.note else note)
    return figures + _attached(s)


def _attached(s: Shape) -> list[Figure]:
    """P2 as first measured: the server restarted and attached to its running local agent."""
    with live_server("p2", JOBS) as server:
        server.launch()
        first = server.wait_agent()
        server.stop()
        server.launch()
        again = server.wait_agent()
        if first != again or "attached to" not in server.log():
            raise RuntimeError(f"the server did not attach to agent {first}:\n{server.log()}")
        figures = repeated(server, s, "P2")
    note = "local agent started before the server (server restarted, attached to it)"
    return [
        replace(f, name=f"attached local agent: {f.name}", target=None, note=note)
        for f in figures[:3]
    ]
