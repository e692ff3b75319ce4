"""Disk full on both sides (spec/05-quality.md, scenario 6), with real daemons whose
state dirs sit on small tmpfs mounts: the server's (its SQLite database) and the
local agent's (its outbox, its processes' output files) fill up while runs run and
finish. A filler file takes the last byte; removing it is space returning.

Each side gets a mount of its own: the server's state dir is a tmpfs, and the local
agent's (`state/local-agent`) is a bind mount of an ordinary directory on it (or
the other way round), so filling one leaves the other writable. Every mount is
undone in a `finally`, whatever the test did.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from apsis_common.protocol import ProcStarted
from tests.agent_harness import Agent, Receiver, running_agent, sh
from tests.harness import Server, group_alive, wait_for

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root"),
]

FAST = "agents: {heartbeat: 0.5s, lost_timeout: 6s}\n"
JOBS = {
    # Output before, during and after the disk is full; a marker per start.
    "lines": (
        "params: [n]\n"
        "program: 'echo {{ run_id }} >> MARKS; for i in $(seq 1 {{ n }}); do "
        'echo "{{ run_id }} line $i"; sleep 0.1; done; exit 2\'\n'
    ),
    # Lines of a kilobyte: pages beyond the ones the file has when the disk fills.
    "wide": (
        "program: 'echo {{ run_id }} >> MARKS; for i in $(seq 1 40); do "
        'echo "{{ run_id }} line $i $(printf %01000d 0)"; sleep 0.1; done; exit 2\'\n'
    ),
    "quick": "program: 'echo {{ run_id }} >> MARKS; echo quick {{ run_id }}'\n",
}


def lines(run_id: str, n: int) -> bytes:
    return b"".join(f"{run_id} line {i}\n".encode() for i in range(1, n + 1))


def _mount(*argv: str) -> None:
    subprocess.run(["mount", *argv], check=True, capture_output=True)


@contextlib.contextmanager
def mounts() -> Iterator[list[Path]]:
    """The mount points made inside; all unmounted afterwards (lazily if still busy,
    as they may be for a moment while killed processes are reaped)."""
    made: list[Path] = []
    try:
        yield made
    finally:
        for point in reversed(made):
            done = subprocess.run(["umount", str(point)], check=False, capture_output=True)
            if done.returncode != 0:
                subprocess.run(["umount", "-l", str(point)], check=False, capture_output=True)


def fill(directory: Path) -> Path:
    """Take every free byte of the filesystem of `directory`; the filler file."""
    filler = directory / "filler"
    with filler.open("wb") as f:
        chunk = b"\0" * 65536
        while True:
            try:
                f.write(chunk)
                f.flush()
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                break
        # The last partial chunk may be buffered: take what is left byte by byte.
        for size in (4096, 512, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(f.fileno(), b"\0" * size)
    return filler


def free(directory: Path) -> int:
    stat = os.statvfs(directory)
    return stat.f_bavail * stat.f_frsize


def starts(marks: Path) -> list[str]:
    return marks.read_text().split() if marks.exists() else []


def world(tmp_path: Path, made: list[Path], small: str) -> tuple[Server, Path]:
    """A server (not started) whose state dir and local agent's state dir are two
    filesystems; `small` ("server" or "agent") is the 4 MB tmpfs, the other a bind
    mount of an ordinary directory. The marker file the programs write."""
    marks = tmp_path / "marks"
    jobs = {k: v.replace("MARKS", str(marks)) for k, v in JOBS.items()}
    server = Server(tmp_path / "root", jobs, FAST)
    server.state.mkdir()
    agent_dir = server.state / "local-agent"
    roomy = tmp_path / "roomy"
    roomy.mkdir()
    if small == "server":
        _mount("-t", "tmpfs", "-o", "size=4m", "tmpfs", str(server.state))
        made.append(server.state)
        agent_dir.mkdir()
        _mount("--bind", str(roomy), str(agent_dir))
    else:
        _mount("--bind", str(roomy), str(server.state))
        made.append(server.state)
        agent_dir.mkdir()
        _mount("-t", "tmpfs", "-o", "size=4m", "tmpfs", str(agent_dir))
    made.append(agent_dir)
    return server, marks


def stats(server: Server) -> dict[str, object]:
    body: dict[str, object] = server.get("/stats")
    return body


def metric(server: Server, name: str) -> float | None:
    response = httpx.get(server.url + "/metrics", timeout=10)
    text = response.text if response.status_code == 200 else ""
    for line in text.splitlines():
        if line.startswith((name + " ", name + "{")):
            return float(line.rsplit(" ", 1)[1])
    return None


def integrity(db: Path) -> str:
    conn = sqlite3.connect(db)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


def test_server_state_dir_full_while_runs_run_and_finish(tmp_path: Path) -> None:
    with mounts() as made:
        server, marks = world(tmp_path, made, "server")
        try:
            server.start()
            pid = server.proc.pid if server.proc else 0
            agent = wait_for(server.agent_pid, 10, "the local agent")
            running = [server.schedule("lines", {"n": "60"}) for _ in range(4)]
            for run_id in running:
                server.wait_state(run_id, "running", 20)
            done = server.schedule("quick")
            server.wait_finished(done, 20)
            filler = fill(server.state)
            # Output keeps coming and runs finish: the next write fails.
            error = wait_for(lambda: stats(server).get("store_error"), 20, "store_error")
            assert "full" in str(error), error
            assert metric(server, "apsis_store_writable") == 0
            answer = server.api("POST", "/runs", json={"job_id": "quick", "args": {}})
            assert answer.status_code == 503, answer.text
            assert "full" in answer.json()["error"], answer.text
            assert "kept" in answer.json()["error"], answer.text
            # The runs finish on the agent while nothing can be written.
            wait_for(lambda: len(starts(marks)) == 5 and _all_exited(server), 30, "exits")
            assert "store write failed" in server.log()
            assert server.log().count("store write failed") == 1, "logged once, not a flood"
            # No crash loop: the same server and agent all along.
            assert server.proc is not None and server.proc.poll() is None
            assert server.agent_pid() == agent and server.proc.pid == pid
            filler.unlink()
            wait_for(lambda: stats(server).get("store_error") is None, 20, "writable again")
            assert metric(server, "apsis_store_writable") == 1
            assert "store writable again" in server.log()
            for run_id in running:
                run = server.wait_finished(run_id, 20)
                assert run["state"] == "failure", run
                assert server.meta(run_id)["exit_code"] == 2
                assert server.output(run_id) == lines(run_id, 60), run_id
            assert server.output(done) == f"quick {done}\n".encode()
            after = server.schedule("quick")
            assert server.wait_finished(after, 20)["state"] == "success"
            # The run asked for while the disk was full was answered 503 but kept (the
            # answer says so), and ran once space returned: one more start, each once.
            marked = starts(marks)
            assert len(marked) == len(set(marked)) == 7, marked
            assert {*running, done, after} < set(marked)
            for run_id in set(marked) - {*running, done, after}:
                assert server.wait_finished(run_id, 20)["state"] == "success"
            server.stop()
            assert integrity(server.state / "apsis.db") == "ok"
            # What is in the database survives a restart, as written.
            server.start()
            for run_id in running:
                assert server.run(run_id)["state"] == "failure"
                assert server.output(run_id) == lines(run_id, 60), run_id
        finally:
            server.cleanup()


def _all_exited(server: Server) -> bool:
    """Whether every process of the local agent has ended (its dir has an exit file
    or is gone)."""
    procs = server.agent_dir / "procs"
    return all((d / "exit").exists() for d in procs.iterdir()) if procs.is_dir() else True


def test_agent_state_dir_full_while_runs_run_and_finish(tmp_path: Path) -> None:
    with mounts() as made:
        server, marks = world(tmp_path, made, "agent")
        agent_log = server.agent_dir / "agent.log"
        try:
            server.start()
            agent = wait_for(server.agent_pid, 10, "the local agent")
            running = [server.schedule("wide") for _ in range(4)]
            for run_id in running:
                server.wait_state(run_id, "running", 30)
            filler = fill(server.agent_dir)
            # A run asked for now cannot get a process directory: it ends at once,
            # with the reason.
            refused = server.schedule("quick")
            run = server.wait_finished(refused, 30)
            assert run["state"] == "error", run
            assert "No space left on device" in run["message"], run
            # The programs end while the disk is full (what they write is refused to
            # them: their own writes fail, nothing is dropped behind their back).
            wait_for(lambda: not _programs_alive(server), 30, "the programs to end")
            text = agent_log.read_text()
            assert "cannot write the outbox" in text, text[-3000:]
            assert text.count("cannot write the outbox") == 1, "said once, not every second"
            # No crash loop: the same agent all along, the runs still running.
            assert server.agent_pid() == agent, agent_log.read_text()[-3000:]
            for run_id in running:
                assert server.run(run_id)["state"] == "running"
            written = {run_id: _written(server, run_id) for run_id in running}
            assert all(len(w) < 40 * 1000 for w in written.values()), "writes were refused"
            filler.unlink()
            # Space returns: each run ends with its true result, and its output is what
            # the program managed to write, byte for byte.
            for run_id in running:
                run = server.wait_finished(run_id, 30)
                assert server.output(run_id) == written[run_id], run_id
                assert run["state"] == "failure", run
                assert server.meta(run_id)["exit_code"] == 2
            assert "the outbox is writable again" in agent_log.read_text()
            assert server.agent_pid() == agent
            after = server.schedule("quick")
            assert server.wait_finished(after, 30)["state"] == "success"
            assert server.output(after) == f"quick {after}\n".encode()
            assert sorted(starts(marks)) == sorted([*running, after]), "each started once"
        except BaseException:
            print(agent_log.read_text()[-8000:] if agent_log.exists() else "no agent log")
            raise
        finally:
            server.cleanup()


def _programs_alive(server: Server) -> bool:
    """Whether a program of the local agent still runs."""
    for pid_file in (server.agent_dir / "procs").glob("*/pid"):
        with contextlib.suppress(OSError, ValueError):
            if group_alive(int(json.loads(pid_file.read_text())["pgid"])):
                return True
    return False


def _written(server: Server, run_id: str) -> bytes:
    """What the program of `run_id` wrote to its output file (the agent keeps the
    directory until the server acknowledges the final event; read it while there)."""
    found = sorted((server.agent_dir / "procs").glob(f"{run_id}.1.*/output"))
    return found[0].read_bytes() if found else b""


@contextlib.contextmanager
def small_agent(tmp_path: Path) -> Iterator[tuple[Path, Agent, Receiver]]:
    """An agent (and its receiver) whose state dir is on a 4 MB tmpfs `small`."""
    with mounts() as made:
        small = tmp_path / "small"
        small.mkdir()
        _mount("-t", "tmpfs", "-o", "size=4m", "tmpfs", str(small))
        made.append(small)
        with running_agent(small) as (agent, receiver):
            yield small, agent, receiver


def test_a_start_whose_pid_the_disk_refuses_still_ends(tmp_path: Path) -> None:
    """The disk fills between a start's spec and its `pid` (the spec takes the last
    page): the program runs all the same, the daemon is told, writes the `pid` once
    there is room (a restarted daemon needs it), and the exit is reported. Before,
    the shim died on the write and its spawner on taking it over: the start stayed
    `starting` for ever (chaos seed 20261207)."""
    with small_agent(tmp_path) as (small, agent, receiver):
        filler = fill(small)
        os.truncate(filler, filler.stat().st_size - 4096)  # one page: the spec's
        marker = tmp_path / "ran"
        agent.start(("p1", sh(f"touch {marker}; sleep 3")))
        wait_for(marker.exists, 10, "the program to run")
        pid_file = small / "agent" / "procs" / "p1" / "pid"
        time.sleep(1.5)  # whoever writes the pid has tried (and met the full disk)
        assert not pid_file.exists() or pid_file.stat().st_size == 0, "the disk is full"
        filler.unlink()
        wait_for(lambda: pid_file.exists() and pid_file.stat().st_size > 0, 10, "the pid")
        facts = json.loads(pid_file.read_text())
        assert os.path.exists(f"/proc/{facts['pid']}"), "the pid of the running program"
        exited = wait_for(lambda: receiver.exited("p1"), 15, "p1 to exit")
        assert exited.exit.exit_code == 0, exited
        assert receiver.events("p1", ProcStarted), "its start reported"


def test_a_forget_the_full_disk_refuses_is_answered_503(tmp_path: Path) -> None:
    """The server forgets a finished process with DELETE; while the agent's disk is
    full its outbox cannot commit that: 503 and Retry-After (the server asks again)
    with nothing forgotten, then 204 once there is room. Before, a 500 and a
    traceback each time (the chaos campaign's PostgreSQL half, seed 20261208)."""
    with small_agent(tmp_path) as (small, agent, receiver):
        receiver.held.add("p1")  # kept until the server says to forget it
        agent.start(("p1", sh("echo done")))
        wait_for(lambda: receiver.exited("p1"), 15, "p1 to exit")
        filler = fill(small)
        refused = agent.request("DELETE", "/procs/p1")
        assert refused.status_code == 503, refused.text
        assert refused.headers["retry-after"] == "1"
        assert b"cannot forget process" in refused.content
        assert agent.request("GET", "/procs/p1").status_code == 200, "nothing forgotten"
        filler.unlink()
        assert agent.request("DELETE", "/procs/p1").status_code == 204
        assert agent.request("GET", "/procs/p1").status_code == 404
