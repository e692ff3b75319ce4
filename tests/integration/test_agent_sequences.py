"""When server and agent disagree about how far the agent's events got, runs never
stick: an agent whose state was wiped starts a new sequence the server follows, a
server restored from a backup skips forward to what the agent holds, and the runs the
agent cannot vouch for end in `error` with the reason (real server, real local agent,
the real SQLite file)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sqlite3
from pathlib import Path

import pytest

from tests.harness import Server, kill_all_under, pid_alive, running_server, wait_for

pytestmark = pytest.mark.timeout(120)

JOBS = {
    "hello": "params: [n]\nprogram: {type: shell, command: 'echo hello {{ n }}'}\n",
    "long": "program: {type: shell, command: 'sleep 60'}\n",
}
CONFIG = "agents: {heartbeat: 0.5s}\n"


def run_ok(server: Server, n: int) -> None:
    run_id = server.schedule("hello", {"n": str(n)})
    run = server.wait_finished(run_id, timeout=20)
    assert run["state"] == "success", server.get(f"/runs/{run_id}/log")
    assert server.output(run_id) == f"hello {n}\n".encode()


def kill_agent(server: Server) -> None:
    pid = server.agent_pid()
    assert pid is not None
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not pid_alive(pid), 10, "the agent to die")


def test_an_agent_whose_state_is_wiped_starts_a_sequence_the_server_follows(
    tmp_path: Path,
) -> None:
    with running_server(tmp_path, JOBS, CONFIG) as server:
        for n in range(3):
            run_ok(server, n)
        long = server.schedule("long")
        server.wait_state(long, "running")
        kill_agent(server)
        # The host was reinstalled, /tmp cleaned: the agent's state is gone, its
        # program orphaned (killed here, as a reinstall would).
        kill_all_under(server.agent_dir)
        shutil.rmtree(server.agent_dir)
        run_ok(server, 3)  # a new agent, numbering its events from 1 again
        ended = server.wait_finished(long, timeout=20)
        assert ended["state"] == "error" and "has no process" in ended["message"], ended
        run_ok(server, 4)
        assert "a new event sequence" in server.log()


def test_a_server_restored_from_a_backup_skips_forward(tmp_path: Path) -> None:
    with running_server(tmp_path, JOBS, CONFIG) as server:
        for n in range(3):
            run_ok(server, n)
        # An online backup, as docs/operations.md describes...
        backup = tmp_path / "backup.db"
        with (
            contextlib.closing(sqlite3.connect(server.state / "apsis.db")) as live,
            contextlib.closing(sqlite3.connect(backup)) as copy,
        ):
            live.backup(copy)
        # ...then newer runs, whose events the agent has had acknowledged since.
        for n in range(3, 6):
            run_ok(server, n)
        server.stop()
        for suffix in ("", "-wal", "-shm"):
            (server.state / f"apsis.db{suffix}").unlink(missing_ok=True)
        shutil.copy(backup, server.state / "apsis.db")
        server.start()
        for n in range(6, 9):
            run_ok(server, n)  # no gap waited on: each runs in seconds
        assert "the server is behind the agent" in server.log()
        assert "gap after" not in server.log()
