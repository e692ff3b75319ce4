"""P10, P11: restarts under load. The server SIGKILLed and restarted with a fleet of
agents and a thousand long runs on them; one agent's daemon SIGKILLed and restarted
with a thousand programs writing output.

P10: every program appends its run id to a marker file as it starts, so a run
started twice shows as a repeated line and a run never started as a missing one.
P11: every program prints a line every 0.5 s for a fixed number of lines, so its
whole output has a known length, and output that stopped flowing shows as a length
that does not grow through the API.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from bench.fleet import GROUP, Fleet, fleet_server
from bench.live import LiveServer, RssSampler, rss_mb, wait_drained
from bench.report import Figure, at_least, at_most
from bench.throughput import fetch_runs, submit

HOLD, TALK = "hold", "talk"


def _job(argv: list[str]) -> str:
    return "program: " + json.dumps({"type": "program", "argv": argv, "host": GROUP}) + "\n"


def _count_in(server: LiveServer, run_ids: set[str], job: str, state: str) -> int:
    """How many of `run_ids` are in `state` (paging through the job's runs in it)."""
    with contextlib.suppress(Exception):  # a server busy restarting: not yet
        return len(fetch_runs(server, run_ids, f"job_id={job}&state={state}"))
    return 0


def _until(check: Callable[[], bool], timeout: float, every: float = 0.1) -> float | None:
    """Seconds until `check()` holds (an error counts as not yet); None after `timeout`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        with contextlib.suppress(Exception):
            if check():
                return time.monotonic() - started
        time.sleep(every)
    return None


def _submit_running(
    server: LiveServer, count: int, job: str, timeout: float
) -> tuple[set[str], float | None]:
    """Submit `count` runs of `job` and wait until all are running; their ids, and
    the seconds that took (None if not all were running within `timeout`)."""
    started = time.monotonic()
    ids = {s.run_id for s in asyncio.run(submit(server.url, count, 8, job))}
    waited = _until(lambda: _count_in(server, ids, job, "running") == count, timeout, 0.5)
    return ids, None if waited is None else time.monotonic() - started


# -- P10 ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Storm:
    agents: int
    runs: int
    seconds: int  # each program's sleep: long enough to outlast submission and storm


def storm(quick: bool) -> Storm:
    return Storm(20, 100, 45) if quick else Storm(200, 1000, 120)


def _hold(root: Path, seconds: int) -> dict[str, str]:
    script = f'echo "$APSIS_RUN_ID" >> "$0"; exec sleep {seconds}'
    return {HOLD: _job(["/bin/sh", "-c", script, str(root / "started")])}


def p10(quick: bool) -> list[Figure]:
    """P10: SIGKILL the server with N agents and long runs on them, and restart it."""
    s = storm(quick)
    with fleet_server("p10", s.agents, lambda root: _hold(root, s.seconds)) as (server, fleet):
        fleet.wait_connected(120 + s.agents)
        ids, took = _submit_running(server, s.runs, HOLD, 120)
        if took is None:
            running = _count_in(server, ids, HOLD, "running")
            raise RuntimeError(f"only {running} of {s.runs} runs running after 120 s")
        figures = [
            Figure("P10", "agents", s.agents, "", note="static agents, one host group"),
            Figure(
                "P10",
                "runs running before the SIGKILL",
                _count_in(server, ids, HOLD, "running"),
                f"of {s.runs}",
                at_least(s.runs),
                f"{took:.1f} s from the first submit to all running",
            ),
            Figure("P10", "server RSS before the SIGKILL", rss_mb(server.pid), "MB"),
            *_restart(server, fleet, ids),
        ]
        wait_drained(server, s.seconds + 120, f"&job_id={HOLD}")
        runs = fetch_runs(server, ids, f"job_id={HOLD}")
        marker = server.root / "started"
        started = Counter(marker.read_text().split()) if marker.exists() else Counter()
    ok = sum(r["state"] == "success" and r["message"] == "exited 0" for r in runs.values())
    n = s.runs
    return [
        *figures,
        Figure("P10", "runs found after", len(runs), f"of {n}", at_least(n)),
        Figure("P10", "runs ended success (exited 0)", ok, f"of {n}", at_least(n)),
        Figure(
            "P10", "runs started (marker file)", len(set(started) & ids), f"of {n}", at_least(n)
        ),
        Figure("P10", "runs started twice", sum(c > 1 for c in started.values()), "", at_most(0)),
    ]


def _restart(server: LiveServer, fleet: Fleet, ids: set[str]) -> list[Figure]:
    """SIGKILL the server, start it again; the storm's figures."""
    n, count = len(fleet.agents), len(ids)
    killed = time.monotonic()
    server.kill()
    server.launch(120)
    up = time.monotonic() - killed
    with RssSampler({"server": server.pid}, 0.1) as rss:
        waited = _until(lambda: fleet.connected() == n, 120, 0.2)
        reconciled = None if waited is None else time.monotonic() - killed
        running = _count_in(server, ids, HOLD, "running")
        connected = fleet.connected()
        time.sleep(2.0)  # the tail of the storm: acks, outboxes
    return [
        Figure("P10", "SIGKILL → server answers", up, "s"),
        Figure("P10", "SIGKILL → every agent reconciled", reconciled, "s", at_most(30)),
        Figure("P10", "agents connected then", connected, f"of {n}", at_least(n)),
        Figure("P10", "runs running then", running, f"of {count}", at_least(count)),
        Figure("P10", "server RSS peak in the storm", rss.peak("server"), "MB", at_most(300)),
    ]


# -- P11 ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Chatter:
    runs: int
    lines: int  # each program prints this many lines, one every 0.5 s


def chatter(quick: bool) -> Chatter:
    return Chatter(100, 60) if quick else Chatter(1000, 200)


def _talk(root: Path, lines: int) -> dict[str, str]:
    # bash's `read -t` on a FIFO no one writes is a sleep without a fork.
    fifo = root / "quiet"
    os.mkfifo(fifo)
    script = (
        f'exec 3<>"$0"; for ((i = 0; i < {lines}; i++));'
        ' do echo "tick $i"; read -t 0.5 -u 3 || :; done'
    )
    return {TALK: _job(["/bin/bash", "-c", script, str(fifo)])}


async def _lengths(
    url: str, run_ids: Sequence[str], clients: int = 8
) -> dict[str, tuple[int, float]]:
    """Each run's output length as the server has it (the `X-Apsis-Output-Length` of
    an empty range of its output, over `clients` keep-alive connections), with the
    time.monotonic() of the answer."""
    target = urlsplit(url)
    todo = list(run_ids)
    out: dict[str, tuple[int, float]] = {}

    async def client() -> None:
        reader, writer = await asyncio.open_connection(target.hostname, target.port)
        try:
            while todo:
                run_id = todo.pop()
                writer.write(
                    f"GET /api/v1/runs/{run_id}/output?start=0&stop=0 HTTP/1.1\r\n"
                    f"Host: {target.netloc}\r\n\r\n".encode()
                )
                status = int((await reader.readline()).split()[1])
                headers = {}
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.partition(b":")
                    headers[name.strip().lower()] = value.strip()
                await reader.readexactly(int(headers.get(b"content-length", b"0")))
                if status != 200:
                    raise RuntimeError(f"output of {run_id} answered {status}")
                out[run_id] = (int(headers[b"x-apsis-output-length"]), time.monotonic())
        finally:
            writer.close()

    async with asyncio.TaskGroup() as tasks:
        for _ in range(min(clients, len(run_ids))):
            tasks.create_task(client())
    return out


def _output_lengths(server: LiveServer, ids: set[str]) -> dict[str, int]:
    return {r: n for r, (n, _) in asyncio.run(_lengths(server.url, sorted(ids))).items()}


def p11(quick: bool) -> list[Figure]:
    """P11: SIGKILL an agent's daemon with 1,000 programs running, start it again."""
    s = chatter(quick)
    full = sum(len(f"tick {i}\n") for i in range(s.lines))
    with fleet_server("p11", 1, lambda root: _talk(root, s.lines)) as (server, fleet):
        fleet.wait_connected(60)
        ids, took = _submit_running(server, s.runs, TALK, 120)
        if took is None:
            running = _count_in(server, ids, TALK, "running")
            raise RuntimeError(f"only {running} of {s.runs} runs running after 120 s")
        time.sleep(2.0)
        figures = _agent_restart(server, fleet, ids)
        wait_drained(server, s.lines / 2 + 120, f"&job_id={TALK}")
        runs = fetch_runs(server, ids, f"job_id={TALK}")
        lengths = _output_lengths(server, ids)
    ok = sum(r["state"] == "success" for r in runs.values())
    whole = sum(lengths.get(r) == full for r in ids)
    n = s.runs
    return [
        Figure(
            "P11",
            "runs running before the restart",
            n,
            f"of {n}",
            note=f"{took:.1f} s from the first submit to all running",
        ),
        *figures,
        Figure("P11", "runs ended success", ok, f"of {n}", at_least(n)),
        Figure(
            "P11",
            "runs with their whole output",
            whole,
            f"of {n}",
            at_least(n),
            f"{full} bytes each",
        ),
    ]


def _agent_restart(server: LiveServer, fleet: Fleet, ids: set[str]) -> list[Figure]:
    agent = fleet.agents[0]
    n = len(ids)
    before = next(a for a in server.get("/agents")["agents"] if a["agent_id"] == agent.agent_id)
    fleet.kill_daemon(agent)
    time.sleep(0.5)  # a batch the daemon had in flight lands first
    lengths = _output_lengths(server, ids)  # nothing flows while the daemon is down
    restarted = time.monotonic()
    fleet.restart(agent)
    listening = time.monotonic() - restarted

    def adopted() -> bool:
        now = next(a for a in server.get("/agents")["agents"] if a["agent_id"] == agent.agent_id)
        return bool(
            now["state"] == "connected"
            and now["epoch"] > before["epoch"]
            and now["agent_running"] == n
        )

    readopted = None if _until(adopted, 60, 0.05) is None else time.monotonic() - restarted
    pending = set(ids)
    grown: dict[str, float] = {}
    deadline = time.monotonic() + 60
    rounds: list[float] = []
    while pending and time.monotonic() < deadline:
        polled = time.monotonic()
        for run_id, (length, at) in asyncio.run(_lengths(server.url, sorted(pending))).items():
            if length > lengths[run_id]:
                grown[run_id] = at - restarted
                pending.discard(run_id)
        rounds.append(time.monotonic() - polled)
    flowing = max(grown.values()) if not pending else None
    running = _count_in(server, ids, TALK, "running")
    return [
        Figure("P11", "restart → the daemon listens", listening, "s"),
        Figure(
            "P11",
            "restart → all re-adopted",
            readopted,
            "s",
            at_most(5),
            "the agent connected in /agents, new epoch, running all",
        ),
        Figure(
            "P11",
            "restart → every run's output growing",
            flowing,
            "s",
            at_most(5),
            "X-Apsis-Output-Length of each run's output, polled; the answer seen grown;"
            f" {len(rounds)} rounds, the first {rounds[0] if rounds else 0:.2f} s",
        ),
        Figure(
            "P11", "runs whose output grew after the restart", len(grown), f"of {n}", at_least(n)
        ),
        Figure("P11", "runs running after the restart", running, f"of {n}", at_least(n)),
    ]
