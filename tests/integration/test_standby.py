"""Servers sharing one PostgreSQL database: one leads, the others stand by, and a
standby takes over when the leader dies or is cut off from the database — real
servers, a real cluster (tests/postgres.py), SIGKILL and a cut TCP proxy."""

from __future__ import annotations

import collections
import contextlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

from tests.harness import Server, wait_for
from tests.proxy import Proxy

pytestmark = pytest.mark.timeout(180)

JOBS = {
    # Runs in the server itself: no agent is needed to see who schedules and starts.
    "tick": "program: {type: no-op, duration: 0.05}\nschedule: {type: interval, interval: 2s}\n",
    "hold": "program: {type: no-op, duration: 6}\n",
}


def config(url: str, server_id: str) -> str:
    return (
        f"store: {{url: '{url}'}}\nserver: {{id: {server_id}}}\n"
        "agents: {local: {enabled: false}}\n"
    )


def role(server: Server) -> str | None:
    try:
        return str(server.get("/servers")["role"])
    except (AssertionError, OSError):
        return None


def leader_of(servers: list[Server]) -> Server:
    def one() -> Server | None:
        leading = [s for s in servers if role(s) == "leader"]
        return leading[0] if len(leading) == 1 else None

    return wait_for(one, 20, "one server to lead")


@pytest.fixture
def pair(tmp_path: Path, postgres_url: str) -> Iterator[list[Server]]:
    servers = [Server(tmp_path / name, JOBS, config(postgres_url, name)) for name in "ab"]
    try:
        for server in servers:
            server.start()
        yield servers
    finally:
        for server in servers:
            server.cleanup()


def runs_of(server: Server, job_id: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = server.get(f"/jobs/{job_id}/runs?limit=1000")["runs"]
    return found


def test_one_leads_the_others_stand_by(pair: list[Server]) -> None:
    leader = leader_of(pair)
    standby = next(s for s in pair if s is not leader)
    view = standby.get("/servers")
    assert view["role"] == "standby" and view["leader"]["url"] == leader.url
    assert {s["server_id"] for s in view["servers"]} == {"a", "b"}
    # Monitoring sees the same: /metrics says who leads, under which epoch.
    metrics = {s: httpx.get(s.url + "/metrics", timeout=30).text for s in pair}
    assert "apsis_leader 1" in metrics[leader] and "apsis_leader 0" in metrics[standby]
    assert "apsis_leader_epoch -1" in metrics[standby]
    assert "apsis_leader_epoch -1" not in metrics[leader]
    assert re.search(r"^apsis_lease_seconds_left 0$", metrics[standby], re.M)
    left = float(re.findall(r"^apsis_lease_seconds_left (\S+)$", metrics[leader], re.M)[0])
    assert 0 < left <= 6, left
    # So does an operator asking either server with `apsis status`.
    shown = subprocess.run(
        [sys.executable, "-m", "cli.main", "--server", standby.url, "status"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].startswith(f"leader: {view['leader']['server_id']} at {leader.url}, epoch "), (
        lines
    )
    assert any(" (this one)" in line and "standby" in line for line in lines), lines
    # A load balancer's check finds the leader; health checks pass on both.
    assert leader.api("GET", "/alive?leader").status_code == 200
    check = standby.api("GET", "/alive?leader")
    assert check.status_code == 503 and leader.url in check.json()["error"]
    assert standby.api("GET", "/alive").status_code == 200
    # Writes go to the leader only; the standby names it.
    refused = standby.api("POST", "/runs", json={"job_id": "hold"})
    assert refused.status_code == 503, refused.text
    assert leader.url in refused.json()["error"]
    # Reads come from the database: the standby shows what the leader does.
    run_id = leader.schedule("hold")
    wait_for(lambda: standby.run(run_id)["state"] == "running", 10, "the standby to see it")
    first = standby.get(f"/runs/{run_id}/log")["log"][0]
    # The log says which server did what.
    assert (
        first["message"] == "scheduled by hand" and first["server"] == view["leader"]["server_id"]
    )


def test_a_standby_takes_over_when_the_leader_is_killed(pair: list[Server]) -> None:
    leader = leader_of(pair)
    standby = next(s for s in pair if s is not leader)
    hold = leader.schedule("hold")
    leader.wait_state(hold, "running")
    killed = time.monotonic()
    leader.kill()
    wait_for(lambda: role(standby) == "leader", 15, "the standby to lead")
    took = time.monotonic() - killed
    assert took <= 10.0, f"took {took:.1f} s"
    # The run that was running when its leader died finishes under the new one.
    done = standby.wait_finished(hold, 20)
    assert done["state"] == "success", standby.get(f"/runs/{hold}/log")
    # Ticks came due while nobody led: each time ran once, none twice.
    time.sleep(3)
    times = collections.Counter(r["schedule_time"] for r in runs_of(standby, "tick"))
    assert times and max(times.values()) == 1, times
    # The catch-up policy (latest) ran the last time missed and skipped the others.
    for run in runs_of(standby, "tick"):
        assert run["state"] in ("success", "scheduled", "skipped"), run
        if run["state"] == "skipped":
            assert run["message"] == "missed while the server was down", run


def test_a_leader_cut_off_from_the_database_steps_down(tmp_path: Path, postgres_url: str) -> None:
    """The leader reaches the database through a proxy that is cut: it stops acting
    before its lease can pass, the other server takes over, and once the proxy
    heals the old leader stands by."""
    host_port = postgres_url.split("@", 1)[1].split("/", 1)[0]
    port = int(host_port.rsplit(":", 1)[1])
    proxy = Proxy(port)
    through = postgres_url.replace(f":{port}/", f":{proxy.port}/")
    a = Server(tmp_path / "a", JOBS, config(through, "a"))
    b = Server(tmp_path / "b", JOBS, config(postgres_url, "b"))
    try:
        a.start()
        wait_for(lambda: role(a) == "leader", 20, "a to lead")
        b.start()
        assert role(b) == "standby"
        cut = time.monotonic()
        proxy.cut()
        wait_for(lambda: role(a) == "standby", 15, "a to step down")
        stepped_down = time.monotonic() - cut
        wait_for(lambda: role(b) == "leader", 15, "b to lead")
        assert stepped_down <= 6.0, f"a stepped down after {stepped_down:.1f} s"
        proxy.heal()
        run_id = b.schedule("hold")
        b.wait_state(run_id, "running")
        wait_for(lambda: a.run(run_id)["state"] == "running", 15, "a to follow as standby")
        assert role(a) == "standby"
        times = collections.Counter(r["schedule_time"] for r in runs_of(b, "tick"))
        assert max(times.values()) == 1, times
    finally:
        proxy.close()
        a.cleanup()
        b.cleanup()


def test_a_standbys_feeds_follow_the_leader(pair: list[Server]) -> None:
    """Websocket clients of a standby see what the leader does, from the database."""
    leader = leader_of(pair)
    standby = next(s for s in pair if s is not leader)
    ws = standby.url.replace("http", "ws", 1) + "/api/v1"
    with connect(ws + "/summary", open_timeout=5) as summary:
        assert json.loads(summary.recv(timeout=5))["type"] == "snapshot"
        run_id = leader.schedule("hold")
        with connect(f"{ws}/runs/{run_id}/updates", open_timeout=5) as updates:
            seen: dict[str, str] = {}
            lines: list[str] = []
            deadline = time.monotonic() + 20
            while seen.get(run_id) != "success" and time.monotonic() < deadline:
                for sock in (summary, updates):
                    with contextlib.suppress(TimeoutError):
                        message = json.loads(sock.recv(timeout=0.2))
                        if message["type"] == "runs":
                            seen.update({r["run_id"]: r["state"] for r in message["runs"]})
                        elif message["type"] == "log":
                            lines += [e["message"] for e in message["entries"]]
            assert seen.get(run_id) == "success", seen
            assert "no-op finished" in lines, lines


def test_a_stopped_leader_hands_over_at_once(pair: list[Server]) -> None:
    """Failing over by hand (docs/operations.md): stopping the leader releases the
    lease, so a standby leads without waiting it out."""
    leader = leader_of(pair)
    standby = next(s for s in pair if s is not leader)
    scheduled = time.monotonic()
    hold = leader.schedule("hold")
    leader.wait_state(hold, "running")
    leader.stop()
    stopped = time.monotonic()
    wait_for(lambda: role(standby) == "leader", 10, "the standby to lead")
    took = time.monotonic() - stopped
    assert took < 3.0, f"took {took:.1f} s: the lease was waited out, not released"
    # The run goes on under the new leader, for as long as it would have.
    assert standby.wait_finished(hold, 20)["state"] == "success"
    assert time.monotonic() - scheduled >= 5.9, "the 6 s no-op ended early"
