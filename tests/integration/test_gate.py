"""What reaches the API's handlers, against a real server and its local agent: only
this server's host names and origins, JSON bodies within the size limit, valid text;
a refused request creates nothing and runs nothing (spec 05: security, bad input)."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect
from websockets.typing import Origin

from tests.harness import Server, running_server, wait_for

pytestmark = pytest.mark.timeout(90)

JOBS = {
    "echo": "params: [name]\nprogram: {type: shell, command: 'echo {{ name | shquote }}'}\n",
    "hello": "program: {type: shell, command: 'echo hello'}\n",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("gate")
    with running_server(root, JOBS) as server:
        yield server


def runs(server: Server) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = server.get("/runs?limit=1000")["runs"]
    return found


def touch_program(marker: Path) -> str:
    return json.dumps({"program": {"type": "shell", "command": f"touch {marker}"}})


def assert_still_works(server: Server) -> None:
    """A normal run, submitted right after, succeeds within a second."""
    start = time.monotonic()
    run_id = server.schedule("echo", {"name": "after"})
    assert server.wait_finished(run_id, timeout=5)["state"] == "success"
    assert time.monotonic() - start < 1.0
    assert server.output(run_id) == b"after\n"


# -- cross-site requests ---------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None],
)
def test_a_body_that_is_not_json_runs_nothing(
    server: Server, tmp_path: Path, content_type: str | None
) -> None:
    """What a form or `fetch(no-cors)` on another site can send: 415, nothing created."""
    before = len(runs(server))
    marker = tmp_path / "ran"
    headers = {"content-type": content_type} if content_type else {}
    response = httpx.post(
        server.url + "/api/v1/runs", content=touch_program(marker), headers=headers
    )
    assert response.status_code == 415, response.text
    assert "application/json" in response.json()["error"]
    assert len(runs(server)) == before
    time.sleep(0.3)
    assert not marker.exists()


@pytest.mark.parametrize("origin", ["http://evil.example", "null", "http://127.0.0.1:1"])
def test_another_origin_is_refused(server: Server, tmp_path: Path, origin: str) -> None:
    before = len(runs(server))
    marker = tmp_path / "ran"
    response = httpx.post(
        server.url + "/api/v1/runs",
        content=touch_program(marker),
        headers={"content-type": "application/json", "origin": origin},
    )
    assert response.status_code == 403, response.text
    assert "cross-origin" in response.json()["error"]
    read = httpx.get(server.url + "/api/v1/jobs", headers={"origin": origin})
    assert read.status_code == 403
    assert "echo" not in read.text
    assert len(runs(server)) == before
    assert not marker.exists()


def test_the_servers_own_origin_is_served(server: Server) -> None:
    response = httpx.post(
        server.url + "/api/v1/runs",
        json={"job_id": "echo", "args": {"name": "same origin"}},
        headers={"origin": server.url},
    )
    assert response.status_code == 201, response.text
    run_id = response.json()["run"]["run_id"]
    assert server.wait_finished(run_id)["state"] == "success"


def test_a_websocket_from_another_origin_reads_nothing(server: Server) -> None:
    ws = server.url.replace("http", "ws", 1)
    for path in ("/api/v1/summary", "/api/v1/runs/r1/updates"):
        with (
            pytest.raises(InvalidStatus, match="403"),
            connect(ws + path, origin=Origin("http://evil.example"), open_timeout=5),
        ):
            pass
    with connect(ws + "/api/v1/summary", origin=Origin(server.url), open_timeout=5) as socket:
        assert json.loads(socket.recv(timeout=5))["type"] == "snapshot"


@pytest.mark.parametrize("path", ["/", "/api/v1/jobs", "/api/v1/summary", "/static/js/app.js"])
def test_a_host_that_is_not_ours_is_refused(server: Server, path: str) -> None:
    """DNS rebinding: attacker.example made to resolve to 127.0.0.1."""
    response = httpx.get(server.url + path, headers={"host": f"attacker.example:{server.port}"})
    assert response.status_code == 400
    assert "not a name of this server" in response.json()["error"]


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "LOCALHOST.", "[::1]", "127.0.0.2"])
def test_loopback_names_are_ours(server: Server, host: str) -> None:
    response = httpx.get(server.url + "/api/v1/jobs", headers={"host": f"{host}:{server.port}"})
    assert response.status_code == 200, response.text


def test_liveness_answers_any_host(server: Server) -> None:
    response = httpx.get(server.url + "/api/v1/alive", headers={"host": "10.1.2.3:5005"})
    assert response.json() == {"alive": True}


def test_configured_origins_and_hosts(tmp_path: Path) -> None:
    config = "api: {origins: ['https://dash.example'], hosts: [apsis.example]}\n"
    with running_server(tmp_path, JOBS, config) as server:
        preflight = httpx.options(
            server.url + "/api/v1/runs",
            headers={
                "origin": "https://dash.example",
                "access-control-request-method": "POST",
                "access-control-request-headers": "content-type",
            },
        )
        assert preflight.status_code == 200, preflight.text
        assert preflight.headers["access-control-allow-origin"] == "https://dash.example"
        response = httpx.post(
            server.url + "/api/v1/runs",
            json={"job_id": "hello"},
            headers={"origin": "https://dash.example"},
        )
        assert response.status_code == 201, response.text
        assert response.headers["access-control-allow-origin"] == "https://dash.example"
        other = httpx.get(server.url + "/api/v1/jobs", headers={"origin": "https://x.example"})
        assert other.status_code == 403
        assert "access-control-allow-origin" not in other.headers
        named = httpx.get(server.url + "/api/v1/jobs", headers={"host": "apsis.example"})
        assert named.status_code == 200


# -- bad bodies and args ------------------------------------------------------------------


def test_a_body_over_the_limit_is_413_before_parsing(server: Server) -> None:
    big = b'{"job_id": "echo", "args": {"name": "' + b"x" * (1024 * 1024) + b'"}}'
    before = len(runs(server))
    response = httpx.post(
        server.url + "/api/v1/runs", content=big, headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert "api.max_body" in response.json()["error"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it comes
        for _ in range(40):
            yield b" " * 65536

    streamed = httpx.post(
        server.url + "/api/v1/runs",
        content=chunks(),
        headers={"content-type": "application/json"},
    )
    assert streamed.status_code == 413
    assert len(runs(server)) == before
    assert_still_works(server)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"[" * 100_000, "nested too deeply"),
        (b'{"job_id": "echo", "args": {"name": ' + b"[" * 5000 + b"]" * 5000 + b"}}", "nested"),
        (b'{"job_id": "echo", "args": {"name": "\\ud800"}}', "not valid Unicode"),
        (b'{"job_id": "echo", "args": {"\\udfff": "x"}}', "not valid Unicode"),
        (b'{"job_id": "echo", "args": {"name": "a\\u0000b"}}', "NUL"),
        (b'{"program": {"type": "shell", "command": "echo \\ud800"}}', "not valid Unicode"),
        (b'{"job_id": "echo", "args": {"name": "' + b"x" * (65 * 1024) + b'"}}', "over 64 KiB"),
        (b'{"job_id": "echo", "args": {"name": 1e999}}', "text"),
        (b"\xff\xfe{}", "not valid JSON"),
    ],
)
def test_bad_input_creates_nothing(server: Server, body: bytes, message: str) -> None:
    before = len(runs(server))
    response = httpx.post(
        server.url + "/api/v1/runs", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]
    assert len(runs(server)) == before
    assert_still_works(server)


def test_all_args_together_have_a_limit(tmp_path: Path) -> None:
    params = [f"p{i}" for i in range(5)]
    jobs = {"many": f"params: {params}\nprogram: {{type: no-op}}\n"}
    with running_server(tmp_path, jobs) as server:
        args = dict.fromkeys(params, "x" * 60 * 1024)
        response = server.api("POST", "/runs", json={"job_id": "many", "args": args})
        assert response.status_code == 400
        assert "256 KiB in all" in response.json()["error"]
        assert runs(server) == []


# -- listening where anyone can reach it -------------------------------------------------------


def start_server(tmp_path: Path, config: str) -> subprocess.Popen[str]:
    (tmp_path / "jobs").mkdir(exist_ok=True)
    (tmp_path / "config.yaml").write_text(f"jobs: jobs\nstate: state\n{config}")
    config_file, port_file = str(tmp_path / "config.yaml"), str(tmp_path / "port")
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "apsis_server",
            "--config",
            config_file,
            "--bind",
            "0.0.0.0:0",
            "--port-file",
            port_file,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_an_open_api_on_the_network_refuses_to_start(tmp_path: Path) -> None:
    proc = start_server(tmp_path, "agents: {local: {enabled: false}}\n")
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert "without API tokens" in out
    assert "api.tokens" in out and "allow_unauthenticated" in out
    assert not (tmp_path / "port").exists()


def test_an_open_api_by_choice_starts_and_says_so(tmp_path: Path) -> None:
    config = "agents: {local: {enabled: false}}\napi: {allow_unauthenticated: true}\n"
    assert "THE API ON 0.0.0.0:0 IS OPEN" in serve_once(tmp_path, config)


def test_tokens_make_a_network_bind_fine(tmp_path: Path) -> None:
    (tmp_path / "ops.token").write_text("rw-token-0123456789abcdef")
    config = "agents: {local: {enabled: false}}\napi: {tokens: {ops: {token_file: ops.token}}}\n"
    assert "IS OPEN" not in serve_once(tmp_path, config)


def serve_once(root: Path, config: str) -> str:
    """Start a server bound to every address, see it answer, stop it; its output."""
    proc = start_server(root, config)
    try:

        def port() -> str | None:
            path = root / "port"
            return path.read_text() if path.exists() else None

        number = int(wait_for(port, 20, "the port file"))
        assert wait_for(lambda: _alive(number), 20, "the server")
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    return out


def _alive(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/api/v1/alive", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_an_odd_string_already_stored_hides_no_run(tmp_path: Path) -> None:
    """A lone surrogate stored by an older version (args are JSON text in the real
    SQLite file) is escaped in answers: the runs list keeps answering, restart or not."""
    with running_server(tmp_path, JOBS) as server:
        run_id = server.schedule("echo", {"name": "fine"})
        server.wait_finished(run_id)
        server.stop()
        with contextlib.closing(sqlite3.connect(server.state / "apsis.db")) as db, db:
            db.execute(
                "UPDATE runs SET args = ? WHERE run_number = ?",
                ('{"name": "\\ud800"}', int(run_id[1:])),
            )
        server.start()
        response = server.api("GET", "/runs")
        assert response.status_code == 200, response.text
        assert "\\ud800" in response.text
        assert server.run(run_id)["args"] == {"name": "\ud800"}
        assert_still_works(server)
