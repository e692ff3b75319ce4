"""F1: failover under load, on PostgreSQL (fsync on; bench/pg.py).

Two servers share one database; a static agent (`apsis-agent serve`) runs the
programs. 20 `sleep` runs are in flight and clients submit `/bin/true` runs
without pause to whichever server takes them, when the leader is SIGKILLed. From
the SIGKILL: the standby leads; the first run started by the new leader (any run
entering `running` after the SIGKILL); the agent reconciled with the new leader
(connected in its `/agents`, which it is only after the reconciliation). Runs/s
started in the 5 s before and the 15 s after. Every run the servers accepted must
end `success`: a run lost in the takeover fails the scenario. Median of 5.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

from bench import pg
from bench.live import LiveServer, scratch_dir, static_agent, wait_drained
from bench.report import Figure, at_most, median_figures
from bench.stats import epoch
from bench.throughput import _response, fetch_runs
from tests.harness import wait_for

AGENT = "svc"
JOBS = {
    "true": f"program: {{type: program, argv: [/bin/true], host: {AGENT}}}\n",
    "hold": f"program: {{type: program, argv: [/bin/sleep, '4'], host: {AGENT}}}\n",
}
BEFORE, AFTER = 5.0, 15.0  # seconds of submission around the SIGKILL
CLIENTS = 4


def role(server: LiveServer) -> str | None:
    with contextlib.suppress(Exception):
        return str(server.get("/servers")["role"])
    return None


@contextlib.contextmanager
def pair(url: str) -> Iterator[tuple[LiveServer, LiveServer]]:
    """Servers a and b on the database at `url`, not started; everything ends after."""
    root = scratch_dir("f1")
    a, b = (
        LiveServer(root / name, JOBS, f"store: {{url: '{url}'}}\nserver: {{id: {name}}}\n")
        for name in "ab"
    )
    a.store_url = b.store_url = url
    try:
        yield a, b
    finally:
        a.cleanup()
        b.cleanup()


@dataclass
class Submitter:
    """Clients posting runs of `true` to whichever server answers 201."""

    urls: list[str]
    accepted: list[str] = field(default_factory=list)
    refused: int = 0
    stop: bool = False

    async def client(self, start: int) -> None:
        at = start
        body = json.dumps({"job_id": "true"}).encode()
        while not self.stop:
            target = urlsplit(self.urls[at % len(self.urls)])
            request = (
                f"POST /api/v1/runs HTTP/1.1\r\nHost: {target.netloc}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode() + body
            try:
                reader, writer = await asyncio.open_connection(target.hostname, target.port)
            except OSError:
                at += 1
                await asyncio.sleep(0.02)
                continue
            try:
                while not self.stop:
                    writer.write(request)
                    status, answer = await _response(reader)
                    if status != 201:
                        self.refused += 1
                        break  # a standby, or a leader stepping down: try the other
                    self.accepted.append(json.loads(answer)["run"]["run_id"])
            except (OSError, EOFError, asyncio.IncompleteReadError, ValueError, IndexError):
                pass  # killed mid-request: that run may or may not exist; not counted
            finally:
                writer.close()
            at += 1
            await asyncio.sleep(0.02)

    async def run(self, seconds_before: float, kill: Any, seconds_after: float) -> float:
        """Submit for `seconds_before`, call `kill()`, go on for `seconds_after`;
        the wall-clock time of the kill."""
        tasks = [asyncio.create_task(self.client(i)) for i in range(CLIENTS)]
        await asyncio.sleep(seconds_before)
        killed = time.time()
        await asyncio.to_thread(kill)
        await asyncio.sleep(seconds_after)
        self.stop = True
        await asyncio.gather(*tasks)
        return killed


def once(url: str) -> list[Figure]:
    with pair(url) as (a, b), static_agent(a, AGENT, [b], "  local: {enabled: false}\n"):
        a.launch()
        wait_for(lambda: role(a) == "leader", 30, "a to lead")
        b.launch()
        wait_for(lambda: role(b) == "standby", 30, "b to stand by")
        a.wait_agent(agent_id=f"static:{AGENT}")
        holds = [a.post("/runs", {"job_id": "hold"})["run"]["run_id"] for _ in range(20)]
        for run_id in holds:
            a.wait_state(run_id, "running", 30)
        marks: dict[str, float] = {}

        def kill() -> None:
            a.kill()
            started = time.monotonic()
            wait_for(lambda: role(b) == "leader", 30, "b to lead")
            marks["lead"] = time.monotonic() - started

            def reconciled() -> bool:
                agents = b.get("/agents")["agents"]
                return any(
                    x["agent_id"] == f"static:{AGENT}" and x["state"] == "connected" for x in agents
                )

            wait_for(reconciled, 30, "the agent to reconcile with b")
            marks["reconciled"] = time.monotonic() - started

        submitter = Submitter([a.url, b.url])
        killed = asyncio.run(submitter.run(BEFORE, kill, AFTER))
        wait_drained(b, 120)
        runs = fetch_runs(b, set(submitter.accepted), "job_id=true")
        runs |= {r: b.run(r) for r in holds}
    return _figures(runs, killed, marks, len(submitter.accepted))


def _figures(
    runs: dict[str, dict[str, Any]], killed: float, marks: dict[str, float], accepted: int
) -> list[Figure]:
    starts = [epoch(r["times"]["running"]) for r in runs.values() if "running" in r["times"]]
    after = [t for t in starts if t > killed]
    first = min(after) - killed if after else None
    succeeded = sum(r["state"] == "success" for r in runs.values())
    before = sum(killed - BEFORE <= t < killed for t in starts) / BEFORE
    through = len([t for t in after if t < killed + AFTER]) / AFTER
    return [
        Figure("F1", "SIGKILL → a standby leads", marks["lead"], "s", at_most(10)),
        Figure("F1", "SIGKILL → first run started by the new leader", first, "s", at_most(10)),
        Figure(
            "F1",
            "SIGKILL → agent reconciled with the new leader",
            marks["reconciled"],
            "s",
            at_most(10),
        ),
        Figure("F1", "runs/s started, 5 s before the SIGKILL", before, "runs/s"),
        Figure("F1", "runs/s started, 15 s from the SIGKILL", through, "runs/s"),
        Figure("F1", "runs accepted", accepted + 20, "runs"),
        Figure(
            "F1", "accepted runs not ended success", accepted + 20 - succeeded, "runs", at_most(0)
        ),
    ]


def f1(quick: bool) -> list[Figure]:
    """F1: the median of 5 failovers (1 with --quick), each on a fresh database."""
    reps = []
    with pg.databases() as cluster:
        for _ in range(1 if quick else 5):
            url = cluster.database()
            try:
                reps.append(once(url))
            finally:
                cluster.drop(url)
    figures = median_figures(reps)
    out = []
    for figure in figures:
        each = [f.value for rep in reps for f in rep if f.name == figure.name]
        if figure.name == "accepted runs not ended success":  # any run lost fails it
            figure = replace(figure, value=max(v or 0 for v in each), note="the most of any")
        elif len(reps) > 1:
            shown = ", ".join("n/a" if v is None else f"{v:.3g}" for v in each)
            figure = replace(figure, note=f"{figure.note}; each: {shown}")
        out.append(figure)
    return out
