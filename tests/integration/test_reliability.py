"""Reliability scenarios of spec/05-quality.md against the real server and agent:
processes and daemons are killed with SIGKILL, the database is read directly."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from pathlib import Path

from tests.harness import Server, group_alive, pid_alive, running_server, wait_for
from tests.proxy import Proxy

FAST = "agents: {heartbeat: 0.5s, lost_timeout: 4s}\n"
JOBS = {
    "a then b": "program: 'echo a; sleep 3; echo b; exit 3'\n",
    "quick b": "program: 'echo a; sleep 0.5; echo b; exit 3'\n",
    "long": "program: {type: program, argv: [/bin/sleep, '30']}\n",
    "sleep": "params: [n]\nprogram: 'echo {{ n }}; sleep 2; echo done {{ n }}'\n",
    "big": (
        "program: {type: program, argv: [python3, -c, "
        "'import sys; [sys.stdout.write(str(i).zfill(9) + chr(10)) for i in range(2000000)]']}\n"
    ),
    "stubborn": (
        "program:\n  type: shell\n  command: \"trap '' TERM; sleep 60 & wait\"\n"
        "  stop: {signal: SIGTERM, grace_period: 2s}\n"
    ),
}
BIG = b"".join(str(i).zfill(9).encode() + b"\n" for i in range(2_000_000))


def _kill_agent(server: Server) -> int:
    pid = wait_for(server.agent_pid, 5, "agent pid")
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not pid_alive(pid), 5, "the agent to die")
    return pid


def _starts(server: Server, run_id: str) -> int:
    log = server.get(f"/runs/{run_id}/log")["log"]
    return sum("running as pid" in e["message"] for e in log)


def _proc_dir(server: Server, run_id: str) -> Path:
    """The process directory of the run's first attempt (its proc id ends in random
    bits), or a path that does not exist yet."""
    found = sorted((server.agent_dir / "procs").glob(f"{run_id}.1.*"))
    return found[0] if found else server.agent_dir / "procs" / f"{run_id}.1.none-yet"


def test_agent_killed_mid_run_is_recovered(tmp_path: Path) -> None:
    with running_server(tmp_path, JOBS, FAST) as server:
        slow = server.schedule("a then b")
        quick = server.schedule("quick b")
        server.wait_state(slow, "running")
        wait_for(lambda: server.output(slow) == b"a\n", 5, "first line")
        old = _kill_agent(server)
        # The server notices the silence and starts the agent again; it re-adopts
        # the running program and reports the one that ended while it was down.
        run = server.wait_finished(slow, 20)
        assert run["state"] == "failure" and server.meta(slow)["exit_code"] == 3
        assert server.output(slow) == b"a\nb\n"
        assert server.wait_finished(quick, 20)["state"] == "failure"
        assert server.output(quick) == b"a\nb\n"
        assert server.agent_pid() != old
        assert _starts(server, slow) == 1 and _starts(server, quick) == 1


def test_shim_killed_too_still_ends_true(tmp_path: Path) -> None:
    """Agent and shim SIGKILLed mid-run: the spawner (a subreaper) still learns how
    the program ends, and the restarted agent reports its true result."""
    with running_server(tmp_path, JOBS, FAST) as server:
        run_id = server.schedule("a then b")
        server.wait_state(run_id, "running")
        info = json.loads(wait_for(lambda: _read(_proc_dir(server, run_id) / "pid"), 5, "pid"))
        _kill_agent(server)
        os.kill(info["shim_pid"], signal.SIGKILL)
        run = server.wait_finished(run_id, 20)
        assert run["state"] == "failure" and server.meta(run_id)["exit_code"] == 3, run
        assert server.output(run_id) == b"a\nb\n"
        assert _starts(server, run_id) == 1


def test_shim_and_spawner_killed_too_is_lost(tmp_path: Path) -> None:
    """With agent, shim and spawner all SIGKILLed, no one can learn how the program
    ends: once it has, the run ends in error saying the process was lost, and what
    is left of its group is killed."""
    with running_server(tmp_path, JOBS, FAST) as server:
        run_id = server.schedule("long")
        server.wait_state(run_id, "running")
        info = json.loads(wait_for(lambda: _read(_proc_dir(server, run_id) / "pid"), 5, "pid"))
        _kill_agent(server)
        for pid in (info["spawner_pid"], info["shim_pid"], info["pid"]):
            os.kill(pid, signal.SIGKILL)
        run = server.wait_finished(run_id, 20)
        assert run["state"] == "error" and "lost" in run["message"], run
        wait_for(lambda: not group_alive(info["pgid"]), 5, "survivors killed")


def _read(path: Path) -> str | None:
    try:
        return path.read_text() or None
    except OSError:
        return None


def test_server_killed_mid_run(tmp_path: Path) -> None:
    with running_server(tmp_path, JOBS, FAST) as server:
        runs = [server.schedule("sleep", {"n": str(i)}) for i in range(20)]
        big = server.schedule("big")
        for run_id in runs:
            server.wait_state(run_id, "running", 20)
        server.kill()
        time.sleep(1)
        server.start()
        for i, run_id in enumerate(runs):
            assert server.wait_finished(run_id, 30)["state"] == "success"
            assert server.output(run_id) == f"{i}\ndone {i}\n".encode()
            assert _starts(server, run_id) == 1
        assert server.wait_finished(big, 60)["state"] == "success"
        assert server.output(big) == BIG
        assert _starts(server, big) == 1


def test_server_killed_during_stop_grace(tmp_path: Path) -> None:
    with running_server(tmp_path, JOBS, FAST) as server:
        run_id = server.schedule("stubborn")
        server.wait_state(run_id, "running")
        pgid: int = wait_for(lambda: server.meta(run_id).get("pgid"), 5, "pgid")
        time.sleep(0.3)  # let bash set its trap
        server.post(f"/runs/{run_id}/stop")
        stopped_at = time.monotonic()
        wait_for(lambda: (_proc_dir(server, run_id) / "stop").exists(), 5, "the agent's stop")
        server.kill()
        # With the server down, the agent still escalates to SIGKILL at the deadline.
        wait_for(lambda: not group_alive(pgid), 5, "the group to be killed")
        assert time.monotonic() - stopped_at < 2 + 1.5
        server.start()
        run = server.wait_finished(run_id, 20)
        assert run["state"] == "failure" and "grace" in run["message"], run


def _partitioned(tmp_path: Path) -> tuple[Server, Proxy]:
    server = Server(tmp_path, JOBS)
    proxy = Proxy(server.port)
    server.config_file.write_text(
        f"jobs: jobs\nstate: state\npublic_url: http://127.0.0.1:{proxy.port}\n{FAST}"
    )
    return server, proxy


def test_short_partition_runs_survive(tmp_path: Path) -> None:
    server, proxy = _partitioned(tmp_path)
    try:
        server.start()
        run_id = server.schedule("sleep", {"n": "7"})
        server.wait_state(run_id, "running")
        proxy.cut()
        time.sleep(2.0)  # shorter than the lost timeout
        assert server.run(run_id)["state"] == "running"
        proxy.heal()
        assert server.wait_finished(run_id, 15)["state"] == "success"
        assert server.output(run_id) == b"7\ndone 7\n"
    finally:
        server.cleanup()
        proxy.close()


def test_long_partition_errors_runs_and_ignores_late_events(tmp_path: Path) -> None:
    server, proxy = _partitioned(tmp_path)
    try:
        server.start()
        run_id = server.schedule("sleep", {"n": "8"})
        server.wait_state(run_id, "running")
        proxy.cut()
        run = server.wait_finished(run_id, 15)
        assert run["state"] == "error" and "unreachable" in run["message"]
        proxy.heal()
        # The agent's late events arrive and are acknowledged, but change nothing.
        db = server.state / "apsis.db"
        wait_for(lambda: _ack(db) > 0 and not list((server.agent_dir / "procs").iterdir()), 40)
        assert server.run(run_id)["state"] == "error"
        log = server.get(f"/runs/{run_id}/log")["log"]
        assert [e["state"] for e in log if e["state"]].count("error") == 1
    finally:
        server.cleanup()
        proxy.close()


def _ack(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        row = conn.execute("SELECT MAX(acked_seq) FROM agent_acks").fetchone()
        return int(row[0] or 0)
    finally:
        conn.close()
