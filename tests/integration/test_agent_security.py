"""Security and bad input: refused requests change nothing; the agent stays up."""

from __future__ import annotations

import functools
import os
import random
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from apsis_common import auth, codec, protocol
from apsis_common.auth import Key
from apsis_common.protocol import ProcList, ProcSpec, StartBatch, StartProc
from tests.agent_harness import Agent, Receiver, running_agent, sh
from tests.harness import wait_for


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Agent, Receiver]]:
    with running_agent(tmp_path_factory.mktemp("security")) as pair:
        yield pair


def _no_procs(a: Agent) -> None:
    listed = codec.decode(ProcList, a.request("GET", "/procs").content)
    assert listed.procs == ()
    # A reported process's directory goes once starts pause; a refused one never had one.
    wait_for(lambda: not list((a.state_dir / "procs").iterdir()), 5, "no process directory")


def _put(a: Agent, proc_id: str = "x") -> tuple[str, bytes]:
    return f"/procs/{proc_id}", codec.encode(ProcSpec(argv=("true",)))


def _send(a: Agent, method: str, path: str, body: bytes, headers: dict[str, str]) -> int:
    headers = headers | {"content-type": protocol.MSGPACK}
    response = a.client.request(method, path, content=body, headers=headers)
    if response.status_code == 401:
        assert response.content == b"", "a 401 says nothing"
    return response.status_code


def test_health_needs_no_signature(agent: tuple[Agent, Receiver]) -> None:
    a, _ = agent
    response = a.client.get("/health")
    assert response.status_code == 200 and response.text == "ok"


def test_unsigned_and_badly_signed_requests_are_refused(agent: tuple[Agent, Receiver]) -> None:
    a, _ = agent
    path, body = _put(a)
    wrong = Key(a.key.key_id, os.urandom(32))
    unknown = Key("someone-else", a.key.secret)
    cases = {
        "no signature": {},
        "wrong secret": auth.sign(wrong, "PUT", path, body),
        "unknown key id": auth.sign(unknown, "PUT", path, body),
        "stale timestamp": auth.sign(a.key, "PUT", path, body, now=time.time() - 3600),
        "future timestamp": auth.sign(a.key, "PUT", path, body, now=time.time() + 3600),
        "body changed": auth.sign(a.key, "PUT", path, body + b"\x00"),
        "other path": auth.sign(a.key, "PUT", "/procs/y", body),
        "other method": auth.sign(a.key, "POST", path, body),
    }
    for name, headers in cases.items():
        assert _send(a, "PUT", path, body, headers) == 401, name
    bad_signature = auth.sign(a.key, "PUT", path, body)
    bad_signature[auth.SIGNATURE] = "0" * 64
    assert _send(a, "PUT", path, body, bad_signature) == 401
    for get in ("/agent", "/procs", "/procs/x/output"):
        assert a.client.get(get).status_code == 401, get
    _no_procs(a)


def _removed(a: Agent, proc_id: str) -> bool:
    return bool(a.request("GET", f"/procs/{proc_id}").status_code == 404)


def test_replayed_request_is_refused(agent: tuple[Agent, Receiver]) -> None:
    a, rx = agent
    body = codec.encode(StartBatch((StartProc("replay", sh("exit 0")),)))
    headers = auth.sign(a.key, "POST", "/procs", body)
    assert _send(a, "POST", "/procs", body, headers) == 200
    assert _send(a, "POST", "/procs", body, headers) == 401
    wait_for(lambda: rx.exited("replay"))
    # Removed once its exit is acknowledged.
    wait_for(lambda: a.request("GET", "/procs/replay").status_code == 404, 5, "removal")
    _no_procs(a)


def test_malformed_bodies_are_400_and_the_agent_stays_up(agent: tuple[Agent, Receiver]) -> None:
    a, _ = agent
    good = codec.encode(StartBatch((StartProc("fuzz", ProcSpec(argv=("true",))),)))
    rng = random.Random(7)
    bodies = [good[:n] for n in range(len(good) - 1)]
    bodies += [rng.randbytes(rng.randint(0, 200)) for _ in range(60)]
    values: tuple[object, ...] = (
        None,
        1,
        "text",
        [],
        {"procs": "x"},
        {"procs": [{"proc_id": 1, "spec": {}}]},
        {"procs": [{"proc_id": "a", "spec": {"argv": "true"}}]},
        {"procs": [{"proc_id": "a", "spec": {"argv": []}}]},
        {"procs": [{"proc_id": "a", "spec": {"argv": [1, 2]}}]},
    )
    bodies += [codec.encode(value) for value in values]
    for body in bodies:
        response = a.request("POST", "/procs", body)
        if response.status_code == 200:
            results = codec.decode(protocol.StartResults, response.content).results
            assert all(r.status == "refused" for r in results), body
            continue
        assert response.status_code == 400, (body, response.status_code)
        assert "error" in codec.decode_plain(response.content)
    assert a.request("PUT", "/procs/a", b"\xc1").status_code == 400
    spec = codec.encode(ProcSpec(argv=("true",)))
    for path in ("/procs/..%2Fetc", "/procs/.hidden", "/procs/a%00b", "/procs/" + "x" * 200):
        assert a.request("PUT", path, spec).status_code in (400, 404), path
    assert a.request("GET", "/procs/x/output?start=-1").status_code in (400, 404)
    assert a.client.get("/health").status_code == 200
    _no_procs(a)


def test_oversized_body_is_refused_before_auth(agent: tuple[Agent, Receiver]) -> None:
    a, _ = agent
    with socket.create_connection(("127.0.0.1", a.ready.port)) as raw:
        context = ssl.create_default_context(cadata=a.ca.cert_pem)
        context.check_hostname = False
        with context.wrap_socket(raw) as tls_sock:
            request = (
                "POST /procs HTTP/1.1\r\nhost: agent\r\ncontent-type: application/msgpack\r\n"
                f"content-length: {protocol.MAX_REQUEST_BYTES + 1}\r\n\r\n"
            )
            tls_sock.sendall(request.encode())
            answer = tls_sock.recv(1000)
    assert answer.startswith(b"HTTP/1.1 413")
    # A body bigger than the limit but without a declared length (chunked).
    chunks = (b"x" * 1024 * 1024 for _ in range(9))
    response = a.client.post("/procs", content=chunks)
    assert response.status_code == 413
    assert a.client.get("/health").status_code == 200


def test_plain_http_is_refused(agent: tuple[Agent, Receiver]) -> None:
    a, _ = agent
    with socket.create_connection(("127.0.0.1", a.ready.port), timeout=5) as raw:
        raw.sendall(b"GET /health HTTP/1.1\r\nhost: agent\r\n\r\n")
        try:
            answer = raw.recv(1000)
        except ConnectionResetError:
            answer = b""
    assert not answer.startswith(b"HTTP/")


def test_secret_is_not_visible(agent: tuple[Agent, Receiver]) -> None:
    a, rx = agent
    secret = a.key.secret.hex().encode()
    a.start(("env", ProcSpec(argv=("/usr/bin/env",))), ("ps", sh("ps auxww")))
    wait_for(lambda: rx.exited("env") and rx.exited("ps"))
    assert b"PATH=" in rx.output("env")
    assert secret not in rx.output("env")
    assert b"apsis_agent" in rx.output("ps") and secret not in rx.output("ps")
    for pid in filter(str.isdigit, os.listdir("/proc")):
        for name in ("cmdline", "environ"):
            try:
                data = Path(f"/proc/{pid}/{name}").read_bytes()
            except OSError:
                continue
            assert secret not in data, f"secret in /proc/{pid}/{name}"
    assert secret not in (a.state_dir / "agent.log").read_bytes()
    assert secret not in a.request("GET", "/agent").content
    keys = a.state_dir / "keys.json"
    assert keys.stat().st_mode & 0o777 == 0o600
    assert a.state_dir.stat().st_mode & 0o777 == 0o700
    for path in a.state_dir.iterdir():
        if path.is_file():
            assert path.stat().st_mode & 0o077 == 0, path
    for name in ("env", "ps"):
        wait_for(functools.partial(_removed, a, name), 5, "removal")
