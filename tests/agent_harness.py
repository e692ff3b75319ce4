"""Helpers for the agent's tests: a webhook receiver, a bootstrapped agent, wait_for.

Everything is real: the agent daemon runs as a subprocess started by
`apsis-agent bootstrap`, the receiver is a Starlette app on uvicorn bound to
127.0.0.1 port 0 in a thread, certificates come from a CA made per test.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from apsis_common import auth, codec, protocol, tls
from apsis_common.auth import Key, Verifier
from apsis_common.errors import AuthError
from apsis_common.protocol import (
    Ack,
    BootstrapCert,
    BootstrapCsr,
    BootstrapHello,
    BootstrapReady,
    Event,
    EventBatch,
    ProcExited,
    ProcLost,
    ProcOutput,
    ProcSpec,
    ProcStartFailed,
    StartBatch,
    StartProc,
    StartResults,
)
from tests.harness import kill_all_under, kill_cgroups, wait_for

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


# -- the webhook receiver ------------------------------------------------------------


@dataclass
class Received:
    """What the receiver applied, in sequence order."""

    events: list[tuple[int, Event]] = field(default_factory=list)
    acked: int = 0
    held_seqs: set[int] = field(default_factory=set)
    batches: int = 0
    heartbeats: int = 0
    duplicates: int = 0
    rejected: int = 0
    epochs: list[int] = field(default_factory=list)


class Receiver:
    """A server's webhook endpoint: verifies signatures, applies in order, acks."""

    def __init__(self, keys: dict[str, bytes], ca: tls.CertPair | None = None) -> None:
        self.keys = keys
        self.state = Received()
        self.lock = threading.Lock()
        self.refuse = False  # answer 503, as a server that is down would
        # Procs whose final event is recorded but never acknowledged (the agent keeps them).
        self.held: set[str] = set()
        self._verifier = Verifier(lambda: self.keys)
        # proto=IPPROTO_TCP, or asyncio leaves Nagle on (40 ms per answer).
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        app = Starlette(routes=[Route("/agent/v1/events", self._events, methods=["POST"])])
        self._tmp: list[Path] = []
        ssl_args: dict[str, Any] = {}
        self.scheme = "http"
        if ca is not None:
            pair = tls.new_cert(ca, ["127.0.0.1"], "apsis test server")
            cert, key = (
                Path(f"/tmp/apsis-test-{self.port}.pem"),
                Path(f"/tmp/apsis-test-{self.port}.key"),
            )
            tls.write_private(cert, pair.cert_pem)
            tls.write_private(key, pair.key_pem)
            self._tmp = [cert, key]
            ssl_args = {"ssl_certfile": str(cert), "ssl_keyfile": str(key)}
            self.scheme = "https"
        config = uvicorn.Config(
            app, log_level="warning", lifespan="off", timeout_keep_alive=60, **ssl_args
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]})

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}/agent/v1/events"

    def __enter__(self) -> Receiver:
        self._thread.start()
        wait_for(lambda: self._server.started, what="receiver start")
        return self

    def __exit__(self, *_: object) -> None:
        self._server.should_exit = True
        self._thread.join(10)
        self._sock.close()
        for path in self._tmp:
            path.unlink(missing_ok=True)

    def _held(self, event: Any) -> bool:
        final = isinstance(event, ProcExited | ProcLost | ProcStartFailed)
        return final and getattr(event, "proc_id", None) in self.held

    async def _events(self, request: Request) -> Response:
        body = await request.body()
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        try:
            self._verifier.verify("POST", target, request.headers, body)
        except AuthError:
            with self.lock:
                self.state.rejected += 1
            return Response(status_code=401)
        if self.refuse:
            return Response(status_code=503)
        batch = codec.decode(EventBatch, body)
        with self.lock:
            state = self.state
            state.batches += 1
            if batch.epoch not in state.epochs:
                state.epochs.append(batch.epoch)
            if not batch.events:
                state.heartbeats += 1
            for envelope in batch.events:
                if envelope.seq <= state.acked:
                    state.duplicates += 1
                elif envelope.seq == state.acked + 1:
                    if self._held(envelope.event):
                        # Record it once, never acknowledge it: the agent keeps the
                        # process until the final word is acknowledged.
                        if envelope.seq not in state.held_seqs:
                            state.held_seqs.add(envelope.seq)
                            state.events.append((envelope.seq, envelope.event))
                        break
                    state.events.append((envelope.seq, envelope.event))
                    state.acked = envelope.seq
                else:
                    break  # never apply past a gap
            acked = state.acked
        return Response(codec.encode(Ack(acked)), media_type=protocol.MSGPACK)

    # -- queries -------------------------------------------------------------------

    def events(self, proc_id: str | None = None, kind: type[Any] | None = None) -> list[Any]:
        with self.lock:
            out = [e for _, e in self.state.events]
        if proc_id is not None:
            out = [e for e in out if getattr(e, "proc_id", None) == proc_id]
        if kind is not None:
            out = [e for e in out if isinstance(e, kind)]
        return out

    def output(self, proc_id: str) -> bytes:
        """The output of a process, reassembled by offset (checking there is no gap)."""
        data = b""
        for event in self.events(proc_id, ProcOutput):
            assert event.offset == len(data), f"gap or overlap at {event.offset}"
            data += event.data
        return data

    def exited(self, proc_id: str) -> ProcExited | None:
        found = self.events(proc_id, ProcExited)
        return found[0] if found else None

    def seqs(self) -> list[int]:
        with self.lock:
            return [seq for seq, _ in self.state.events]


# -- the agent -------------------------------------------------------------------------


def agent_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "apsis_agent", *args]


@dataclass
class Agent:
    """A bootstrapped agent daemon and a signed client for it."""

    state_dir: Path
    ca: tls.CertPair
    key: Key
    ready: BootstrapReady
    client: httpx.Client

    @property
    def pid(self) -> int:
        return self.ready.pid

    def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        key: Key | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        signed = auth.sign(key or self.key, method, path, body)
        signed["content-type"] = protocol.MSGPACK
        return self.client.request(method, path, content=body, headers=signed | (headers or {}))

    def start(self, *procs: tuple[str, ProcSpec]) -> StartResults:
        batch = StartBatch(tuple(StartProc(proc_id, spec) for proc_id, spec in procs))
        response = self.request("POST", "/procs", codec.encode(batch))
        assert response.status_code == 200, response.text
        return codec.decode(StartResults, response.content)

    def close(self) -> None:
        self.client.close()


def hello(agent_id: str, key: Key, webhook_url: str, ca: tls.CertPair) -> BootstrapHello:
    return BootstrapHello(
        agent_id, key.key_id, key.secret.hex(), webhook_url, ca.cert_pem, ("127.0.0.1",)
    )


def run_bootstrap(
    state_dir: Path, message: BootstrapHello, ca: tls.CertPair, *extra: str
) -> tuple[int, list[dict[str, Any]]]:
    """Run `apsis-agent bootstrap` as the server would; its exit status and lines."""
    proc = subprocess.Popen(
        agent_command("bootstrap", "--state-dir", str(state_dir), *extra),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=ROOT,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    lines: list[dict[str, Any]] = []
    try:
        proc.stdin.write(codec.encode_json(message).decode() + "\n")
        proc.stdin.flush()
        first = json.loads(proc.stdout.readline() or "{}")
        lines.append(first)
        if "csr_pem" in first:
            csr = codec.from_plain(BootstrapCsr, first)
            cert = tls.issue(ca, csr.csr_pem, message.hosts)
            proc.stdin.write(codec.encode_json(BootstrapCert(cert)).decode() + "\n")
            proc.stdin.flush()
            lines.extend(json.loads(line) for line in proc.stdout if line.strip())
        proc.stdin.close()
        status = proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    return status, lines


def bootstrap(
    state_dir: Path, receiver: Receiver, ca: tls.CertPair, key: Key, *extra: str
) -> Agent:
    """Bootstrap an agent reporting to `receiver`; fails the test on error."""
    status, lines = run_bootstrap(state_dir, hello("agent-1", key, receiver.url, ca), ca, *extra)
    assert status == 0, lines
    ready = codec.from_plain(BootstrapReady, lines[-1])
    client = httpx.Client(
        base_url=f"https://127.0.0.1:{ready.port}",
        verify=tls.client_context(ca.cert_pem),
        timeout=10,
        trust_env=False,
    )
    return Agent(state_dir, ca, key, ready, client)


def serve(state_dir: Path, *extra: str) -> subprocess.Popen[bytes]:
    """Run `apsis-agent serve` in the foreground (as systemd would)."""
    log = open(state_dir / "agent.log", "ab")  # noqa: SIM115 - handed to the child
    try:
        return subprocess.Popen(
            agent_command("serve", "--state-dir", str(state_dir), *extra),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            cwd=ROOT,
            start_new_session=True,
        )
    finally:
        log.close()


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def kill_daemon(state_dir: Path, sig: int = signal.SIGTERM) -> None:
    """Signal the daemon of `state_dir` (if any) and wait until it released its lock."""
    import fcntl

    try:
        pid = int((state_dir / "daemon.pid").read_text())
    except (FileNotFoundError, ValueError):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)

    def unlocked() -> bool:
        fd = os.open(state_dir / "lock", os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        finally:
            os.close(fd)
        return True

    wait_for(unlocked, 10, "the daemon to release its lock")


def kill_procs(state_dir: Path) -> None:
    """SIGKILL every program group and shim recorded under `state_dir`."""
    procs = state_dir / "procs"
    if not procs.exists():
        return
    for directory in procs.iterdir():
        with contextlib.suppress(FileNotFoundError, ValueError):
            facts = json.loads((directory / "pid").read_text())
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(facts["pgid"], signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(facts["shim_pid"], signal.SIGKILL)


@contextlib.contextmanager
def running_agent(
    tmp_path: Path, https: bool = False, *extra: str
) -> Iterator[tuple[Agent, Receiver]]:
    """A receiver and an agent bootstrapped against it; everything stopped afterwards."""
    ca = tls.new_ca()
    key = Key.generate()
    state_dir = tmp_path / "agent"
    with Receiver({key.key_id: key.secret}, ca if https else None) as receiver:
        agent = bootstrap(state_dir, receiver, ca, key, "--heartbeat", "0.5", *extra)
        try:
            yield agent, receiver
        finally:
            agent.close()
            kill_daemon(state_dir)
            kill_procs(state_dir)
            kill_all_under(state_dir)
            kill_cgroups(state_dir)


def sh(script: str, **kwargs: Any) -> ProcSpec:
    """A spec running `script` with /bin/sh."""
    return ProcSpec(argv=("/bin/sh", "-c", script), **kwargs)
