"""P3, P4: many interval jobs; how late their runs start, how the server copes.

Lateness of a run = times.running - schedule_time, both taken by the server.
P3 gives 2,000 jobs the same `phase`, so all are due in the same second; P4 spreads
10,000 jobs' phases over the minute (~167 runs due every second) and watches a
window of a couple of minutes after the server is up.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import httpx

from bench.live import NOT_STARTED, LiveServer, RssSampler, live_server, rss_mb
from bench.report import Figure, at_least, at_most
from bench.stats import epoch, iso, percentile

TRUE = "{type: program, argv: [/bin/true]}"
NOOP = "{type: no-op}"


def interval_jobs(count: int, program: str, phase: Callable[[int], float]) -> dict[str, str]:
    """`count` jobs running `program` every 60 s at `phase(i)` seconds into the minute."""
    return {
        f"j{i:05d}": (
            f"program: {program}\nschedule: {{type: interval, interval: 60, phase: {phase(i):g}}}\n"
        )
        for i in range(count)
    }


def runs_between(server: LiveServer, since: float, until: float) -> list[dict[str, Any]]:
    """Every run with a schedule time in [since, until), paging through the API."""
    out: list[dict[str, Any]] = []
    before = ""
    while True:
        page = server.get(f"/runs?since={iso(since)}&until={iso(until)}&limit=1000{before}")
        out += page["runs"]
        if page["next"] is None:
            return out
        before = f"&before={page['next']}"


def lateness(runs: list[dict[str, Any]], now: float) -> tuple[list[float], int]:
    """Seconds late per run (a run not yet running counts as late as `now`), and how
    many had not started."""
    late: list[float] = []
    unstarted = 0
    for run in runs:
        due = epoch(run["schedule_time"])
        if "running" in run["times"]:
            late.append(epoch(run["times"]["running"]) - due)
        else:
            unstarted += 1
            late.append(now - due)
    return late, unstarted


def _late_figures(
    scenario: str, prefix: str, late: list[float], target: float | None
) -> list[Figure]:
    bound = at_most(target) if target is not None else None
    return [
        Figure(scenario, f"{prefix}lateness p50", percentile(late, 50), "s"),
        Figure(scenario, f"{prefix}lateness p99", percentile(late, 99), "s", bound),
        Figure(scenario, f"{prefix}lateness max", max(late, default=math.nan), "s"),
    ]


def _same_second(quick: bool, program: str, prefix: str, target: float | None) -> list[Figure]:
    count = 500 if quick else 2000
    lead = 12.0 if quick else 20.0
    due = math.ceil(time.time() + lead)
    jobs = interval_jobs(count, program, lambda i: due % 60)
    with live_server("p3", jobs) as server:
        server.launch(120)
        server.wait_agent(120)
        ready = time.time()
        while due < ready + 1:  # not up in time: measure the next occurrence
            due += 60
        time.sleep(max(0.0, due - time.time() + 2))
        window = (due - 0.5, due + 0.5)
        pending = ",".join(NOT_STARTED)
        query = f"/runs?state={pending}&since={iso(window[0])}&until={iso(window[1])}&limit=1"
        _wait_quietly(server, query)
        runs = runs_between(server, *window)
        late, unstarted = lateness(runs, time.time())
        rss = rss_mb(server.pid)
    # Counted and gated: a run never created or never started must fail the
    # scenario, not make its lateness look better.
    figures = [
        Figure("P3", f"{prefix}runs due at the same second", len(runs), "runs", at_least(count)),
        Figure("P3", f"{prefix}runs started", len(runs) - unstarted, "runs", at_least(count)),
        *_late_figures("P3", prefix, late, target),
    ]
    if target is not None:
        figures.append(Figure("P3", "server RSS after", rss, "MB"))
    return figures


def _wait_quietly(server: LiveServer, query: str, timeout: float = 120.0) -> None:
    """Poll until `query` finds no run, gently: over one connection, twice a second.

    A fresh client per poll costs ~15 ms of CPU (its TLS context) on a machine
    the burst keeps busy: polling that way took a sixth of it, and the runs it
    waits for started later for it.
    """
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=f"{server.url}/api/v1", timeout=30) as client:
        while True:
            answer = client.get(query)
            answer.raise_for_status()
            if not answer.json()["runs"]:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"runs still not started after {timeout:g} s: {query}")
            time.sleep(0.5)


def p3(quick: bool) -> list[Figure]:
    """P3: 2,000 jobs due the same second, through the agent and (for comparison) no-op."""
    figures = _same_second(quick, TRUE, "", 2.0)
    if quick:
        return figures
    noop = _same_second(quick, NOOP, "no-op program: ", None)
    note = "no agent involved: the scheduler alone"
    return figures + [Figure(f.scenario, f.name, f.value, f.unit, None, note) for f in noop]


def precision(quick: bool) -> list[Figure]:
    """Light load: 20 jobs every 10 s, due at distinct times; how late each starts."""
    count, interval = 20, 10
    duration = 30.0 if quick else 60.0
    jobs = {
        f"j{i:02d}": (
            f"program: {TRUE}\n"
            f"schedule: {{type: interval, interval: {interval}, phase: {i * interval / count:g}}}\n"
        )
        for i in range(count)
    }
    with live_server("precision", jobs) as server:
        server.launch()
        server.wait_agent()
        start = math.ceil(time.time()) + 5.0  # past the agent's start-up
        time.sleep(start + duration + 2 - time.time())
        runs = runs_between(server, start, start + duration)
        late, unstarted = lateness(runs, time.time())
    late_ms = [1000 * x for x in late]
    return [
        Figure("S1", "runs due in the window", len(runs), f"of {count * duration / interval:.0f}"),
        Figure("S1", "not running 2 s after the window", unstarted, ""),
        Figure("S1", "lateness p50", percentile(late_ms, 50), "ms"),
        Figure("S1", "lateness p99", percentile(late_ms, 99), "ms", at_most(50)),
        Figure("S1", "lateness max", max(late_ms, default=math.nan), "ms"),
    ]


def p4(quick: bool) -> list[Figure]:
    """P4: 10,000 jobs at interval 60, phases spread over the minute."""
    count = 10_000
    duration = 20.0 if quick else 120.0
    jobs = interval_jobs(count, TRUE, lambda i: i % 60)
    with live_server("p4", jobs) as server:
        alive = server.launch(120)
        listed = server.first_answer("/jobs", 120)
        server_rss = rss_mb(server.pid)
        agent = server.wait_agent(120)
        start = math.ceil(time.time()) + 2.0
        with RssSampler({"server": server.pid, "agent": agent}, 0.5) as rss:
            time.sleep(start + duration + 5 - time.time())
        runs = runs_between(server, start, start + duration)
        late, unstarted = lateness(runs, time.time())
    # Job i is due at seconds ≡ i (mod 60): count the jobs due in each second.
    expected = sum(
        count // 60 + (second % 60 < count % 60)
        for second in range(int(start), int(start + duration))
    )
    return [
        Figure("P4", "start → /alive answers", alive, "s", at_most(5)),
        Figure("P4", "start → /jobs answers", listed, "s", at_most(5)),
        Figure("P4", "server RSS when up", server_rss, "MB"),
        Figure("P4", "server RSS peak", rss.peak("server"), "MB", at_most(300)),
        Figure("P4", "agent RSS peak", rss.peak("agent"), "MB"),
        Figure("P4", "runs due in the window", len(runs), "runs", at_least(expected)),
        Figure("P4", "not running 5 s after the window", unstarted, "runs", at_most(0)),
        *_late_figures("P4", "", late, 3.0),
    ]
