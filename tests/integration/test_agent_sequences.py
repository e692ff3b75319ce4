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


def test_a_start_the_wiped_agent_may_have_made_is_not_made_again(tmp_path: Path) -> None:
    """The agent took a start (its answer reached the server) but had not yet said the
    program started when its state was wiped (the host reinstalled): the new agent
    cannot say whether the old one started it, so the run ends `error` with that
    reason — never a second start. Later runs go to the new agent as usual."""
    marks = tmp_path / "marks"
    command = f"echo {{{{ run_id }}}} >> {marks}"
    jobs = {**JOBS, "marked": f"program: {{type: shell, command: '{command}'}}\n"}
    with running_server(tmp_path / "server", jobs, CONFIG) as server:
        run_ok(server, 0)
        spawner = _spawner(server)
        os.kill(spawner, signal.SIGSTOP)  # the agent takes starts; nothing is spawned
        try:
            run_id = server.post("/runs", {"job_id": "marked"})["run"]["run_id"]
            assert server.run(run_id)["state"] == "starting"
            kill_agent(server)
        finally:
            os.kill(spawner, signal.SIGKILL)
        kill_all_under(server.agent_dir)
        shutil.rmtree(server.agent_dir)
        run = server.wait_finished(run_id, 30)
        assert run["state"] == "error", server.get(f"/runs/{run_id}/log")
        assert "may have started" in run["message"], run
        run_ok(server, 1)  # a new agent, in a new sequence, takes new starts
        assert not marks.exists() or run_id not in marks.read_text().split()


def _spawner(server: Server) -> int:
    """The pid of the local agent's spawner (a child of its daemon)."""
    daemon = server.agent_pid()
    assert daemon is not None
    children = Path(f"/proc/{daemon}/task/{daemon}/children").read_text().split()
    found = [int(c) for c in children if b"spawner" in Path(f"/proc/{c}/cmdline").read_bytes()]
    assert len(found) == 1, children
    return found[0]
