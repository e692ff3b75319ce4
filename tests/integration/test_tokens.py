"""API tokens (401 without, 403 for a read-only token on an operation, 200 with the
right one) and the API over HTTPS with `tls: {auto: true}`, against a real server."""

from __future__ import annotations

import base64
import json
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect
from websockets.typing import Subprotocol

from apsis_common.tls import client_context
from tests.harness import Server, running_server

pytestmark = pytest.mark.timeout(60)

RW, RO = "rw-token-0123456789abcdef", "ro-token-0123456789abcdef"
CONFIG = """
api:
  tokens:
    ops: {token_file: ops.token, access: rw}
    viewer: {token_file: viewer.token, access: ro}
"""
JOBS = {"hello": "program: {type: shell, command: 'echo hello'}\n"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def write_tokens(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "ops.token").write_text(RW + "\n")
    (root / "viewer.token").write_text(RO)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("tokens")
    write_tokens(root)
    with running_server(root, JOBS, CONFIG) as server:
        yield server


def request(server: Server, method: str, path: str, token: str | None, **kw: Any) -> httpx.Response:
    headers = bearer(token) if token else {}
    return httpx.request(method, server.url + path, headers=headers, timeout=10, **kw)


@pytest.mark.parametrize(
    ("method", "path", "token", "status"),
    [
        ("GET", "/api/v1/jobs", None, 401),
        ("GET", "/api/v1/jobs", "wrong-token-0123456789", 401),
        ("GET", "/api/v1/jobs", RO, 200),
        ("GET", "/api/v1/jobs", RW, 200),
        ("GET", "/api/v1/version", None, 401),
        ("GET", "/api/v1/openapi.json", None, 401),
        ("GET", "/api/v1/stats", RO, 200),
        ("GET", "/api/v1/nope", None, 401),
        ("GET", "/api/v1/alive", None, 200),
        ("GET", "/metrics", None, 401),
        ("GET", "/metrics", RO, 200),
        ("POST", "/api/v1/jobs/reload", None, 401),
        ("POST", "/api/v1/jobs/reload", RO, 403),
        ("POST", "/api/v1/jobs/reload", RW, 200),
        ("GET", "/", None, 200),
    ],
)
def test_access(server: Server, method: str, path: str, token: str | None, status: int) -> None:
    response = request(server, method, path, token)
    assert response.status_code == status, response.text
    if status in (401, 403):
        assert "error" in response.json()
    if status == 401:
        assert response.headers["www-authenticate"].startswith("Bearer")


def test_scheme_and_header_forms(server: Server) -> None:
    for header in (f"bearer {RO}", f"Bearer  {RO}"):
        response = httpx.get(server.url + "/api/v1/jobs", headers={"Authorization": header})
        assert response.status_code == 200, header
    for header in (f"Basic {RO}", RO, "Bearer", f"Bearer {RO[:-1]}", f"Bearer {RO}x"):
        response = httpx.get(server.url + "/api/v1/jobs", headers={"Authorization": header})
        assert response.status_code == 401, header


def test_read_only_operation_has_no_effect(server: Server) -> None:
    def count() -> int:
        runs = request(server, "GET", "/api/v1/runs?job_id=hello", RO).json()["runs"]
        return len(runs)

    before = count()
    response = request(server, "POST", "/api/v1/runs", RO, json={"job_id": "hello"})
    assert response.status_code == 403
    assert count() == before
    response = request(server, "POST", "/api/v1/runs?wait=10", RW, json={"job_id": "hello"})
    assert response.status_code == 201
    # The agent webhook has its own HMAC and no token: the run finished through it.
    assert response.json()["run"]["state"] == "success"
    assert count() == before + 1


def test_webhook_is_not_token_protected(server: Server) -> None:
    response = httpx.post(server.url + "/agent/v1/events", content=b"x")
    assert response.status_code == 401
    assert response.content == b""  # the webhook's own refusal, not the token middleware's


def test_websockets(server: Server) -> None:
    ws = server.url.replace("http", "ws", 1) + "/api/v1/summary"
    with pytest.raises(InvalidStatus), connect(ws, open_timeout=5):
        pass
    with connect(ws, additional_headers=bearer(RO), open_timeout=5) as socket:
        assert json.loads(socket.recv(timeout=5))["type"] == "snapshot"
    # A browser cannot set headers on a websocket: its token rides in a subprotocol.
    carrier = "apsis.token." + base64.urlsafe_b64encode(RO.encode()).decode().rstrip("=")
    with connect(ws, subprotocols=[Subprotocol("apsis"), Subprotocol(carrier)]) as socket:
        assert socket.subprotocol == "apsis"
        assert json.loads(socket.recv(timeout=5))["type"] == "snapshot"
    wrong = "apsis.token." + base64.urlsafe_b64encode(b"wrong-token-0123456789").decode().rstrip(
        "="
    )
    with pytest.raises(InvalidStatus), connect(ws, subprotocols=[Subprotocol(wrong)]):
        pass
    # Never in a URL, where logs would keep it: the query parameter is refused.
    with pytest.raises(InvalidStatus), connect(f"{ws}?access_token={RO}", open_timeout=5):
        pass


def test_tokens_are_in_no_log_line(server: Server) -> None:
    """Tokens sent every way a client may (header, subprotocol, an old client's query
    parameter) appear nowhere in the server's log."""
    test_websockets(server)
    request(server, "GET", "/api/v1/jobs", RW)
    request(server, "GET", f"/api/v1/jobs?access_token={RW}", None)
    log = server.log_file.read_text()
    assert "WebSocket /api/v1/summary" in log  # the lines are there, redacted
    assert RO not in log and RW not in log


class HttpsServer(Server):
    """The harness server, spoken to over HTTPS, trusting the state's CA."""

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def context(self) -> ssl.SSLContext | bool:
        ca = self.state / "ca" / "ca.pem"
        return client_context(ca.read_text()) if ca.exists() else False

    def _alive(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"server exited {self.proc.returncode}:\n{self.log()}")
        context = self.context()
        if not isinstance(context, ssl.SSLContext):
            return False
        try:
            response = httpx.get(self.url + "/api/v1/alive", timeout=1, verify=context)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        kwargs.setdefault("headers", bearer(RW))
        return httpx.request(
            method, self.url + "/api/v1" + path, timeout=30, verify=self.context(), **kwargs
        )


def test_https_api_and_webhook(tmp_path: Path) -> None:
    write_tokens(tmp_path)
    server = HttpsServer(tmp_path, JOBS, CONFIG + "tls: {auto: true}\n")
    try:
        server.start()
        run_id = server.schedule("hello")
        assert server.wait_finished(run_id)["state"] == "success"
        assert server.output(run_id) == b"hello\n"
        settings = json.loads((server.agent_dir / "agent.json").read_text())
        assert settings["webhook_url"].startswith("https://127.0.0.1:")
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{server.port}/api/v1/alive", timeout=2)
        response = server.api("GET", "/jobs", headers={})
        assert response.status_code == 401
    finally:
        server.cleanup()
