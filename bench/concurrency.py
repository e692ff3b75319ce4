"""P7: a thousand concurrent `sleep 20` runs on one agent.

All runs are submitted as fast as the API takes them; while they run, the agent's
memory (daemon, spawner and supervisors: `agent_mb`) is sampled and the number of
active runs read from /api/v1/agents. After the last one finishes, the agent's
open file descriptors must come back to the count they had before (waited for up
to 15 s, so a lingering connection is not a leak).
"""

from __future__ import annotations

import asyncio
import time

from apsis_common.states import FINISHED
from bench.live import LiveServer, RssSampler, agent_mb, fd_count, live_server
from bench.report import Figure, at_least, at_most
from bench.stats import epoch
from bench.throughput import fetch_runs, submit

SLEEP_JOB = "sleep"
_MEMORY = "daemon + spawner + supervisors, PSS"


def _jobs(seconds: int) -> dict[str, str]:
    return {
        SLEEP_JOB: f"program: {{type: program, argv: [/bin/sleep, '{seconds}']}}\n",
        "true": "program: {type: program, argv: [/bin/true]}\n",
    }


def _watch(server: LiveServer, timeout: float) -> int:
    """Poll until no run is active; the most active runs the agent had at once."""
    peak = 0
    deadline = time.monotonic() + timeout
    query = (
        f"/runs?state=new,scheduled,waiting,starting,running,stopping&limit=1&job_id={SLEEP_JOB}"
    )
    while time.monotonic() < deadline:
        agents = server.get("/agents")["agents"]
        peak = max([peak, *(int(a["running"]) for a in agents)])
        if not server.get(query)["runs"]:
            return peak
        time.sleep(0.5)
    raise RuntimeError(f"runs still active after {timeout}s")


def _settled_fds(pid: int, before: int | None, timeout: float) -> int | None:
    """The fd count of `pid` once it is back to `before`, or after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while (now := fd_count(pid)) != before and time.monotonic() < deadline:
        time.sleep(0.5)
    return now


def p7(quick: bool) -> list[Figure]:
    """P7: every run succeeds, the agent stays small and leaks no descriptors."""
    count, seconds = (200, 5) if quick else (1000, 20)
    with live_server("p7", _jobs(seconds)) as server:
        server.launch()
        agent = server.wait_agent()
        for _ in range(3):  # warm up: the agent's connections and first forks
            server.post("/runs?wait=10", {"job_id": "true"})
        time.sleep(2.0)
        fds_before = fd_count(agent)
        rss_before = agent_mb(agent)
        with RssSampler({"agent": agent}, 1.0, agents=["agent"]) as rss:
            submitted = asyncio.run(submit(server.url, count, 8, SLEEP_JOB))
            peak_active = _watch(server, seconds + 60 + count / 5)
        runs = fetch_runs(server, {s.run_id for s in submitted}, f"job_id={SLEEP_JOB}")
        fds_after = _settled_fds(agent, fds_before, 15.0)
    ok = sum(r["state"] == "success" and r["message"] == "exited 0" for r in runs.values())
    ends = [epoch(r["times"][r["state"]]) for r in runs.values() if r["state"] in FINISHED]
    first = min(s.submit for s in submitted)
    return [
        Figure("P7", f"runs succeeded (sleep {seconds})", ok, f"of {count}", at_least(count)),
        Figure("P7", "most runs active at once", peak_active, "runs", at_least(count)),
        Figure("P7", "first submit → last finished", max(ends) - first, "s"),
        Figure("P7", "agent memory before", rss_before, "MB", note=_MEMORY),
        Figure("P7", "agent memory peak", rss.peak("agent"), "MB", at_most(200), _MEMORY),
        Figure("P7", "agent fds before", fds_before, ""),
        Figure(
            "P7", "agent fds after - before", (fds_after or 0) - (fds_before or 0), "", at_most(0)
        ),
    ]
