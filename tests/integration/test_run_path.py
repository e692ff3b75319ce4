"""A run travels the whole real path: job file → server → local agent → process → store → API."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import Server, group_alive, running_server, wait_for

JOBS = {
    "hello": "program: echo hello from {{ run_id }}\n",
    "exit seven": "program: {type: shell, command: 'echo failing; exit 7'}\n",
    "missing": "program: {type: program, argv: [/usr/bin/nope-not-here, x]}\n",
    "both streams": (
        "program:\n  type: program\n  argv: [/bin/bash, -c, "
        '\'printf "out\\\\000\\\\377\\\\n"; printf "err\\\\n" >&2; printf tail\']\n'
    ),
    "merged streams": (
        "program:\n  type: program\n  stderr: merge\n  argv: [/bin/bash, -c, "
        '\'printf "out\\\\000\\\\377\\\\n"; printf "err\\\\n" >&2; printf tail\']\n'
    ),
    "long": "program: {type: program, argv: [/bin/sleep, '600']}\n",
    "slow": "params: [n]\nprogram: 'echo start {{ n }}; sleep 3; echo end {{ n }}'\n",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("apsis"), JOBS) as server:
        yield server


def test_success_and_output(server: Server) -> None:
    run_id = server.schedule("hello")
    run = server.wait_finished(run_id)
    assert run["state"] == "success", run
    assert server.output(run_id) == f"hello from {run_id}\n".encode()
    meta = server.meta(run_id)
    assert meta["exit_code"] == 0
    log = [e["message"] for e in server.get(f"/runs/{run_id}/log")["log"]]
    assert log[0] == "scheduled by hand" and any("running as pid" in m for m in log)


def test_exit_code_is_failure(server: Server) -> None:
    run_id = server.schedule("exit seven")
    run = server.wait_finished(run_id)
    assert run["state"] == "failure"
    assert server.meta(run_id)["exit_code"] == 7
    assert "exited 7" in run["message"]
    assert server.output(run_id) == b"failing\n"


def test_missing_executable_is_error(server: Server) -> None:
    run = server.wait_finished(server.schedule("missing"))
    assert run["state"] == "error"
    assert "/usr/bin/nope-not-here" in run["message"]


def test_stdout_and_stderr_byte_exact(server: Server) -> None:
    run_id = server.schedule("both streams")
    assert server.wait_finished(run_id)["state"] == "success"
    out = server.api("GET", f"/runs/{run_id}/output", params={"name": "stdout"}).content
    err = server.api("GET", f"/runs/{run_id}/output", params={"name": "stderr"}).content
    assert (out, err) == (b"out\x00\xff\ntail", b"err\n")
    merged = server.output(run_id)
    assert sorted(merged) == sorted(out + err)  # both, in the order the agent read them
    # Merged by the program: exactly in the order written.
    run_id = server.schedule("merged streams")
    assert server.wait_finished(run_id)["state"] == "success"
    assert server.output(run_id) == b"out\x00\xff\nerr\ntail"


def test_stop_kills_the_group(server: Server) -> None:
    run_id = server.schedule("long")
    server.wait_state(run_id, "running")
    pgid: int = wait_for(lambda: server.meta(run_id).get("pgid"), 5, "pgid in meta")
    assert group_alive(pgid)
    assert server.post(f"/runs/{run_id}/stop")["run"]["state"] in ("stopping", "success")
    run = server.wait_finished(run_id)
    assert run["state"] == "success", run  # ended by the stop signal after a requested stop
    assert server.meta(run_id)["signal"] == signal.Signals.SIGTERM.name
    wait_for(lambda: not group_alive(pgid), 5, "the process group to be gone")


def test_wrong_state_is_409(server: Server) -> None:
    run_id = server.schedule("hello")
    server.wait_finished(run_id)
    response = server.api("POST", f"/runs/{run_id}/stop")
    assert response.status_code == 409
    assert "success" in response.json()["error"]
    assert server.api("GET", "/runs/r999999").status_code == 404
    assert server.api("POST", "/runs", json={"job_id": "nope"}).status_code == 404


def test_restart_keeps_history_and_finishes_running_runs(tmp_path: Path) -> None:
    with running_server(tmp_path, JOBS) as server:
        done = server.schedule("hello")
        server.wait_finished(done)
        running = server.schedule("slow", {"n": "1"})
        server.wait_state(running, "running")
        wait_for(lambda: server.output(running) == b"start 1\n", 5, "first output line")
        server.kill()
        # The database file holds the history while the server is down.
        import sqlite3

        db = sqlite3.connect(server.state / "apsis.db")
        states = dict(db.execute("SELECT 'r' || run_number, state FROM runs").fetchall())
        db.close()
        assert states[done] == "success" and states[running] == "running"
        server.start()
        assert server.run(done)["state"] == "success"
        assert server.output(done) == f"hello from {done}\n".encode()
        run = server.wait_finished(running, 20)
        assert run["state"] == "success", (run, server.log())
        assert server.output(running) == b"start 1\nend 1\n"
        log = [json.dumps(e) for e in server.get(f"/runs/{running}/log")["log"]]
        assert sum("running as pid" in e for e in log) == 1  # started once only


def test_output_over_the_cap_keeps_head_and_tail(tmp_path: Path) -> None:
    jobs = {
        "chatty": (
            "program: {type: program, argv: [python3, -c, "
            "'import sys; [sys.stdout.write(str(i).zfill(9) + chr(10)) for i in range(1000)]']}\n"
        )
    }
    full = b"".join(str(i).zfill(9).encode() + b"\n" for i in range(1000))
    with running_server(tmp_path, jobs, "output: {max_bytes: 2000}\n") as server:
        run_id = server.schedule("chatty")
        assert server.wait_finished(run_id)["state"] == "success"
        response = server.api("GET", f"/runs/{run_id}/output")
        assert response.headers["x-apsis-output-length"] == str(len(full))
        assert response.content == full[:1000] + full[-1000:]
        meta = server.meta(run_id)
        assert meta["output_length"] == len(full)
        assert meta["output_omitted"] == [1000, len(full) - 1000]
        # The tail by range, as the UI asks for it.
        tail = server.api("GET", f"/runs/{run_id}/output", params={"start": len(full) - 50})
        assert tail.content == full[-50:]


def test_submission_is_answered_once_the_agent_holds_the_start(server: Server) -> None:
    """POST /runs answers a run handed to an agent once the agent has accepted the
    start (its spec is on the agent's disk), a program that cannot start as an error,
    and a run for later at once."""
    run = server.post("/runs", {"job_id": "long"}, status=201)["run"]
    try:
        assert run["state"] in ("starting", "running"), run
        [proc_dir] = (server.agent_dir / "procs").glob(f"{run['run_id']}.1.*")
        assert (proc_dir / "spec").exists()
        assert len(proc_dir.name) == len(f"{run['run_id']}.1.") + 11  # 64 random bits
        server.wait_state(run["run_id"], "running")
    finally:
        server.post(f"/runs/{run['run_id']}/kill")
    missing = server.post("/runs", {"program": {"type": "program", "argv": ["/nonexistent"]}})
    assert missing["run"]["state"] in ("starting", "error"), missing
    later = server.post("/runs", {"job_id": "long", "time": "2999-01-01T00:00:00Z"})["run"]
    assert later["state"] == "scheduled"
    server.post(f"/runs/{later['run_id']}/skip")
