"""Soak: runs submitted steadily for a long time while the agent and the server are
killed and restarted; no run is lost, none starts twice, memory stays flat.

Outside `make test` (marker `slow`): `pytest -m slow tests/soak` runs it for 30
minutes; APSIS_SOAK_SECONDS and APSIS_SOAK_RATE shorten or change it.
"""

from __future__ import annotations

import functools
import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.harness import Server, pid_alive, running_server, wait_for

SECONDS = float(os.environ.get("APSIS_SOAK_SECONDS", "1800"))
RATE = float(os.environ.get("APSIS_SOAK_RATE", "50"))
RESTART_EVERY = min(180.0, SECONDS / 4)


def _gone(pid: int) -> bool:
    return not pid_alive(pid)


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class Submitter(threading.Thread):
    """Submits runs at a steady rate; a submission the server did not take is retried."""

    def __init__(self, server: Server) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.accepted: list[str] = []
        self.refused = 0
        self.stop = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.server.url, timeout=10) as client:
            next_at = time.monotonic()
            while not self.stop.is_set():
                try:
                    answer = client.post("/api/v1/runs", json={"job_id": "tick"})
                    if answer.status_code == 201:
                        self.accepted.append(answer.json()["run"]["run_id"])
                        next_at += 1 / RATE
                    else:
                        self.refused += 1
                except httpx.HTTPError:
                    self.refused += 1
                    time.sleep(0.2)
                    next_at = time.monotonic()
                time.sleep(max(0.0, next_at - time.monotonic()))


@pytest.mark.slow
@pytest.mark.timeout(SECONDS + 600)
def test_soak_with_restarts(tmp_path: Path) -> None:
    config = "agents: {heartbeat: 1s, lost_timeout: 10 min}\n"
    with running_server(tmp_path, {"tick": "program: 'echo tick'\n"}, config) as server:
        submitter = Submitter(server)
        submitter.start()
        time.sleep(min(30.0, SECONDS / 10))
        assert server.proc is not None
        rss_start = _rss(server.proc.pid)
        end = time.monotonic() + SECONDS
        restarts = 0
        while time.monotonic() < end:
            time.sleep(min(RESTART_EVERY, max(0.0, end - time.monotonic())))
            if time.monotonic() >= end:
                break
            restarts += 1
            if restarts % 2:
                pid = server.agent_pid()
                if pid is not None:
                    os.kill(pid, signal.SIGKILL)
                    wait_for(functools.partial(_gone, pid), 10)
            else:
                server.kill()
                time.sleep(2)
                server.start()
        submitter.stop.set()
        submitter.join(30)
        assert server.proc is not None
        rss_end = _rss(server.proc.pid)
        accepted = submitter.accepted

        def settled() -> bool:
            db = sqlite3.connect(server.state / "apsis.db")
            try:
                row = db.execute(
                    "SELECT COUNT(*) FROM runs WHERE state NOT IN"
                    " ('success', 'failure', 'error', 'skipped')"
                ).fetchone()
                return int(row[0]) == 0
            finally:
                db.close()

        wait_for(settled, 120, "every run to finish")
        db = sqlite3.connect(server.state / "apsis.db")
        states = dict(db.execute("SELECT 'r' || run_number, state FROM runs").fetchall())
        starts = dict(
            db.execute(
                "SELECT 'r' || run_number, COUNT(*) FROM run_log"
                " WHERE message LIKE 'running as pid%' GROUP BY run_number"
            ).fetchall()
        )
        db.close()
        lost = [r for r in accepted if r not in states]
        bad = {r: states[r] for r in accepted if r in states and states[r] != "success"}
        twice = {r: n for r, n in starts.items() if n > 1}
        print(
            f"soak: {len(accepted)} runs in {SECONDS:.0f}s, {restarts} restarts,"
            f" {submitter.refused} refused while down, RSS {rss_start >> 20} → {rss_end >> 20} MB"
        )
        assert not lost, f"{len(lost)} accepted runs missing: {lost[:5]}"
        assert not bad, f"{len(bad)} runs did not succeed: {list(bad.items())[:5]}"
        assert not twice, f"{len(twice)} runs started twice: {list(twice.items())[:5]}"
        assert rss_end < rss_start * 1.5 + (20 << 20)
