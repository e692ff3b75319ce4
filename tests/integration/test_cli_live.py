"""The CLI's live commands over the websocket feeds, against the real server and agent.

Every command runs with `--poll 60`: if it polled instead of reading a feed it
would wait a minute and the test would time out.
"""

from __future__ import annotations

import contextlib
import os
import select
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from apsis_common.tls import client_context
from cli.feeds import FeedClient, SummaryFeed
from cli.main import main
from tests.harness import Server, group_alive, running_server, wait_for
from tests.proxy import Proxy

pytestmark = pytest.mark.timeout(30)

GATED = (
    "params: [gate]\n"
    "program:\n  type: program\n  argv: [/bin/bash, -c, "
    """'echo 1; echo 2; while [ ! -e "$1" ]; do sleep 0.02; done; echo 3; echo 4', """
    'gated, "{{ gate }}"]\n'
)
JOBS = {
    "count": "program: {type: shell, command: 'for i in 1 2 3; do echo $i; sleep 0.5; done'}\n",
    "gated": GATED,
    "hello": "program: echo hello\n",
    "exit seven": "program: {type: shell, command: 'echo failing; exit 7'}\n",
    "missing": "program: {type: program, argv: [/usr/bin/nope-not-here, x]}\n",
    "watched": "program: echo watched\n",
    "sleeper": "program: {type: program, argv: [/bin/sleep, '600']}\n",
}
NO_POLL = ("--poll", "60")
TOKEN = "cli-live-token-0123456789abcdef"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("cli-live"), JOBS) as server:
        yield server


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("APSIS_SERVER", "APSIS_TOKEN", "APSIS_CA"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


def apsis(url: str, *args: str) -> int:
    return main(["--server", url, *NO_POLL, *args])


def spawn(url: str, *args: str) -> subprocess.Popen[bytes]:
    """`apsis` as a process of its own, its stdout a pipe."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("APSIS_")}
    return subprocess.Popen(
        [sys.executable, "-m", "cli.main", "--server", url, *NO_POLL, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=env,
    )


def read_line(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> bytes:
    """One line of the process's stdout, read as soon as it is written."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    line = b""
    while not line.endswith(b"\n"):
        left = deadline - time.monotonic()
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, left))
        if not ready:
            raise AssertionError(f"no line after {timeout}s (got {line!r})")
        byte = os.read(proc.stdout.fileno(), 1)
        if not byte:
            raise AssertionError(f"stdout ended (got {line!r}): {finish(proc)}")
        line += byte
    return line


def finish(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> tuple[int, bytes, bytes]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def gated(server: Server, tmp_path: Path) -> tuple[str, Path]:
    """A run that prints `1`, `2`, then waits until its gate file exists to print `3`, `4`."""
    gate = tmp_path / "gate"
    return server.schedule("gated", {"gate": str(gate)}), gate


def test_output_follow_streams_while_the_run_is_running(server: Server, tmp_path: Path) -> None:
    run_id, gate = gated(server, tmp_path)
    proc = spawn(server.url, "output", run_id, "--follow")
    try:
        assert read_line(proc) == b"1\n"
        # The run cannot finish before the gate opens: the line came live.
        assert server.run(run_id)["state"] in {"starting", "running"}
        assert read_line(proc) == b"2\n"
        gate.touch()
        code, rest, err = finish(proc)
    finally:
        proc.kill()
    assert (code, rest) == (0, b"3\n4\n"), err
    assert server.wait_finished(run_id)["state"] == "success"
    assert server.output(run_id) == b"1\n2\n3\n4\n"


def test_output_follow_exits_when_the_run_ends(server: Server) -> None:
    run_id = server.schedule("count")
    proc = spawn(server.url, "output", run_id, "--follow")
    try:
        code, out, err = finish(proc)
    finally:
        proc.kill()
    assert code == 0, err
    assert out == b"1\n2\n3\n"
    assert server.run(run_id)["state"] == "success"
    assert server.output(run_id) == out


def test_output_follow_tail_starts_from_the_last_lines(server: Server, tmp_path: Path) -> None:
    run_id, gate = gated(server, tmp_path)
    wait_for(lambda: server.output(run_id) == b"1\n2\n", 10, "the first two lines")
    proc = spawn(server.url, "output", run_id, "--follow", "--tail", "1")
    try:
        assert read_line(proc) == b"2\n"
        gate.touch()
        code, rest, err = finish(proc)
    finally:
        proc.kill()
    assert (code, rest) == (0, b"3\n4\n"), err


def test_output_follow_resumes_after_a_dropped_connection(server: Server, tmp_path: Path) -> None:
    proxy = Proxy(server.port)
    try:
        run_id, gate = gated(server, tmp_path)
        proc = spawn(f"http://127.0.0.1:{proxy.port}", "output", run_id, "--follow")
        try:
            assert read_line(proc) == b"1\n"
            assert read_line(proc) == b"2\n"
            proxy.cut()  # drops the websocket; the CLI must reconnect from offset 4
            proxy.heal()
            gate.touch()
            code, rest, err = finish(proc)
        finally:
            proc.kill()
    finally:
        proxy.close()
    assert (code, rest) == (0, b"3\n4\n"), err


def test_output_follow_of_an_unknown_run(
    server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    assert apsis(server.url, "output", "r999999", "--follow") == 1
    assert "no run 'r999999'" in capsys.readouterr().err  # as the REST API says it


@pytest.mark.parametrize(("job", "code"), [("hello", 0), ("exit seven", 1), ("missing", 2)])
def test_wait_exits_with_the_outcome(
    server: Server, capsys: pytest.CaptureFixture[str], job: str, code: int
) -> None:
    run_id = server.schedule(job)
    assert apsis(server.url, "wait", run_id) == code
    out = capsys.readouterr().out
    assert out.startswith(f"{run_id} {job}: {server.run(run_id)['state']}")


def test_wait_on_a_finished_run(server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    run_id = server.schedule("exit seven")
    server.wait_finished(run_id)
    assert apsis(server.url, "wait", run_id, "-q") == 1
    assert capsys.readouterr().out == ""


def test_schedule_wait_output(server: Server, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    assert apsis(server.url, "schedule", "count", "--wait", "--output") == 0
    captured = capsysbinary.readouterr()
    assert captured.out == b"1\n2\n3\n"
    assert captured.err == b""


def test_schedule_output_of_a_failure(
    server: Server, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    assert apsis(server.url, "schedule", "exit seven", "--output") == 1
    captured = capsysbinary.readouterr()
    assert captured.out == b"failing\n"
    assert b"exit seven: failure" in captured.err


def test_schedule_wait_prints_the_finished_run(
    server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    assert apsis(server.url, "schedule", "missing", "--wait") == 2
    assert ": error" in capsys.readouterr().out


def test_log_follow_ends_with_the_final_transition(
    server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    run_id = server.schedule("count")
    assert apsis(server.url, "log", run_id, "--follow") == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert "scheduled by hand" in lines[0]
    assert "success" in lines[-1]
    log = server.get(f"/runs/{run_id}/log")["log"]
    assert len(lines) == len(log)  # every entry once


def test_watch_once_shows_the_jobs_runs(server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    done = [server.schedule("watched") for _ in range(2)]
    for run_id in done:
        server.wait_finished(run_id)
    running = server.schedule("sleeper")
    server.wait_state(running, "running")
    try:
        assert apsis(server.url, "watch", "watched", "--once") == 0
        out = capsys.readouterr().out
        assert out.startswith("runs of watched")
        rows = {line.split()[0]: line for line in out.splitlines()[2:]}
        assert set(rows) == set(done)  # the job's runs only
        assert all(" success " in row for row in rows.values())

        assert apsis(server.url, "watch", "--once") == 0
        out = capsys.readouterr().out
        row = next(line for line in out.splitlines() if line.startswith(running + " "))
        assert "sleeper" in row and "running" in row

        assert apsis(server.url, "watch", running, "--once") == 0
        out = capsys.readouterr().out
        assert running in out and "running" in out and "sleeper" in out
    finally:
        server.post(f"/runs/{running}/kill")


def test_watch_run_exits_with_its_outcome(
    server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    run_id = server.schedule("exit seven")
    assert apsis(server.url, "watch", run_id) == 1
    out = capsys.readouterr().out
    assert run_id in out and "failure" in out


# -- the token and the CA apply to the feeds --------------------------------------------


class HttpsServer(Server):
    """The harness server with `tls: {auto: true}` and a token, over HTTPS."""

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca(self) -> Path:
        return self.state / "ca" / "ca.pem"

    def _alive(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"server exited {self.proc.returncode}:\n{self.log()}")
        try:
            response = httpx.get(self.url + "/api/v1/alive", timeout=1, verify=self._context())
        except (httpx.HTTPError, OSError):
            return False
        return response.status_code == 200

    def _context(self) -> ssl.SSLContext:
        return client_context(self.ca.read_text())

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        kwargs.setdefault("headers", {"Authorization": f"Bearer {TOKEN}"})
        url = self.url + "/api/v1" + path
        return httpx.request(method, url, timeout=30, verify=self._context(), **kwargs)


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpsServer]:
    root = tmp_path_factory.mktemp("cli-live-tls")
    (root / "ops.token").write_text(TOKEN)
    config = "api: {tokens: {ops: {token_file: ops.token, access: rw}}}\ntls: {auto: true}\n"
    server = HttpsServer(root, JOBS, config)
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


def test_token_and_ca_apply_to_the_feeds(
    secure: HttpsServer, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    options = ("--token", TOKEN, "--ca", str(secure.ca))
    assert apsis(secure.url, *options, "schedule", "count", "--output") == 0
    assert capsysbinary.readouterr().out == b"1\n2\n3\n"
    run_id = secure.schedule("exit seven")
    assert apsis(secure.url, *options, "wait", run_id) == 1
    assert apsis(secure.url, *options, "watch", "count", "--once") == 0
    assert b"success" in capsysbinary.readouterr().out
    # Without the token the feed is refused, and so is the REST API the CLI falls back to.
    assert apsis(secure.url, "--ca", str(secure.ca), "wait", run_id) == 1
    assert b"API token is needed" in capsysbinary.readouterr().err


def test_summary_feed_reconnects_with_a_fresh_snapshot(server: Server) -> None:
    proxy = Proxy(server.port)
    try:
        feed = SummaryFeed(FeedClient(f"http://127.0.0.1:{proxy.port}"), idle=0.1)
        with contextlib.closing(iter(feed)) as updates:
            assert next(updates) == "snapshot"
            proxy.cut()  # drops the connection; the feed reconnects once healed
            proxy.heal()
            run_id = server.schedule("watched")
            server.wait_finished(run_id)
            deadline = time.monotonic() + 10
            for _ in updates:
                run = feed.runs.get(run_id)
                if feed.snapshots == 2 and run is not None and run["state"] == "success":
                    break
                assert time.monotonic() < deadline, "no fresh snapshot with the new run"
    finally:
        proxy.close()


def test_error_and_mark_with_a_message(server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    run_id = server.schedule("sleeper")
    server.wait_state(run_id, "running")
    pgid: int = wait_for(lambda: server.meta(run_id).get("pgid"), 5, "pgid")
    assert apsis(server.url, "error", run_id, "--message", "wedged on the NFS mount") == 0
    assert "error" in capsys.readouterr().out
    assert server.run(run_id)["message"] == "wedged on the NFS mount"
    wait_for(lambda: not group_alive(pgid), 5, "the program to be killed")
    assert apsis(server.url, "error", run_id) == 1  # finished: 409
    assert "already finished" in capsys.readouterr().err
    assert apsis(server.url, "mark", run_id, "failure", "-m", "checked by hand") == 0
    assert server.run(run_id)["message"] == "checked by hand"
