"""The start-or-attach exchange (`apsis-agent bootstrap`), lines of JSON on stdin/stdout.

    server → BootstrapHello   agent id, key id + secret, webhook URL, CA, host names
    agent  → BootstrapCsr     for the agent's own key (made here, never leaves)
    server → BootstrapCert    issued by the server's CA for those host names
    agent  → BootstrapReady   port, pid, epoch, version, attached

The secret goes from stdin straight into the state dir (0600): never on a command
line, in the environment or in a log. With the daemon lock free, the daemon is
started detached (own session, stdio to `agent.log`); otherwise the running
daemon is told to reload (SIGHUP), keeping the previous key valid for rotation.
Either way the agent answers only once a request signed with the new key works.
On any error: one line `{"error": "..."}` and a non-zero exit.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from apsis_agent import control
from apsis_agent.state import StateDir
from apsis_common import codec, tls
from apsis_common.auth import Key
from apsis_common.errors import BadInput, Unavailable
from apsis_common.protocol import (
    AgentInfo,
    BootstrapCert,
    BootstrapCsr,
    BootstrapHello,
    BootstrapReady,
)

T = TypeVar("T")
_KEY_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
READY_TIMEOUT = 20.0


def _read_line(stdin: IO[str], cls: type[T]) -> T:
    line = stdin.readline()
    if not line:
        raise BadInput(f"expected a {cls.__name__} line, got end of input")
    try:
        plain = json.loads(line)
    except ValueError as exc:
        raise BadInput(f"expected a {cls.__name__} line of JSON: {exc}") from None
    return codec.from_plain(cls, plain)


def _write_line(stdout: IO[str], message: Any) -> None:
    stdout.write(codec.encode_json(message).decode() + "\n")
    stdout.flush()


def check_hello(hello: BootstrapHello) -> Key:
    """The key the hello carries; BadInput if anything in it is unusable."""
    if not _KEY_ID.fullmatch(hello.key_id) or not hello.agent_id:
        raise BadInput("bad agent id or key id")
    try:
        secret = bytes.fromhex(hello.secret)
    except ValueError:
        raise BadInput("the secret is not hex") from None
    if len(secret) < 16:
        raise BadInput("the secret is too short (at least 16 bytes)")
    if not hello.webhook_url.startswith(("http://", "https://")):
        raise BadInput("the webhook URL must be http:// or https://")
    try:
        x509.load_pem_x509_certificate(hello.ca_pem.encode())
    except ValueError:
        raise BadInput("the CA is not a PEM certificate") from None
    return Key(hello.key_id, secret)


def check_cert(cert_pem: str, key_pem: str, ca_pem: str) -> None:
    """BadInput unless the certificate is for our key and issued by the CA."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem.encode())
        ca = x509.load_pem_x509_certificate(ca_pem.encode())
        key = serialization.load_pem_private_key(key_pem.encode(), None)
    except ValueError as exc:
        raise BadInput(f"bad certificate: {exc}") from None
    raw = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(*raw) != key.public_key().public_bytes(*raw):
        raise BadInput("the certificate is not for the agent's key")
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError) as exc:
        raise BadInput("the certificate is not issued by the server's CA") from exc
    except Exception as exc:  # InvalidSignature has no common base with the above
        raise BadInput("the certificate is not issued by the server's CA") from exc


# What a login over ssh adds that is about that session, not the host: a daemon that
# outlives the session must not hand it to every program it runs.
_SESSION_VARIABLES = frozenset(
    {"SSH_CLIENT", "SSH_CONNECTION", "SSH_TTY", "SSH_AUTH_SOCK", "SSH_ORIGINAL_COMMAND"}
)


def daemon_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment the daemon (and, through it, programs) starts with: the
    bootstrap's, less the ssh session's own variables."""
    return {k: v for k, v in environ.items() if k not in _SESSION_VARIABLES}


def _launch(state: StateDir, serve_args: list[str]) -> int:
    """Start `serve` detached: own session, stdin /dev/null, stdio to the log; its pid."""
    package_root = str(Path(__file__).resolve().parent.parent)
    code = (
        f"import sys; sys.path.insert(0, {package_root!r}); "
        "from apsis_agent.app import main; sys.exit(main())"
    )
    argv = [sys.executable, "-c", code, "serve", "--state-dir", str(state.path), *serve_args]
    log_fd = os.open(state.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        return os.posix_spawn(
            sys.executable,
            argv,
            daemon_environment(os.environ),
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, log_fd, 1),
                (os.POSIX_SPAWN_DUP2, log_fd, 2),
            ],
            setsid=True,
        )
    finally:
        os.close(log_fd)


def _log_tail(state: StateDir) -> str:
    try:
        lines = state.log_file.read_text(errors="replace").strip().splitlines()
    except FileNotFoundError:
        return ""
    return lines[-1] if lines else ""


def _start(state: StateDir, serve_args: list[str]) -> AgentInfo:
    pid = _launch(state, serve_args)

    def alive() -> str | None:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done == 0:
            return None
        if not state.daemon_running():
            return f"the agent exited at start (status {status}): {_log_tail(state)}"
        return None  # lost a race with another daemon: attach to that one

    info = control.wait_ready(state, READY_TIMEOUT, alive)
    if info.pid != pid and state.daemon_running():
        return _attach(state)  # another daemon won the lock meanwhile
    return info


def _attach(state: StateDir) -> AgentInfo:
    pid = state.read_int(state.pid_file)
    if pid is not None:
        try:
            os.kill(pid, signal.SIGHUP)
        except ProcessLookupError:
            pid = None

    def alive() -> str | None:
        return None if state.daemon_running() else "the running agent went away"

    return control.wait_ready(state, READY_TIMEOUT, alive)


def run(state_dir: Path, serve_args: list[str], stdin: IO[str], stdout: IO[str]) -> int:
    """The whole exchange; the exit status."""
    try:
        ready = _exchange(StateDir(state_dir), serve_args, stdin, stdout)
    except (BadInput, Unavailable, OSError) as exc:
        stdout.write(json.dumps({"error": str(exc)}) + "\n")
        stdout.flush()
        return 1
    _write_line(stdout, ready)
    return 0


def _exchange(
    state: StateDir, serve_args: list[str], stdin: IO[str], stdout: IO[str]
) -> BootstrapReady:
    hello = _read_line(stdin, BootstrapHello)
    key = check_hello(hello)
    state.create()
    # One bootstrap at a time per state dir; held until this process exits.
    state.try_lock(state.bootstrap_lock_file, blocking=True)
    key_pem = state.key_file.read_text() if state.key_file.exists() else tls.new_key_pem()
    name = hello.hosts[0] if hello.hosts else socket.gethostname()
    _write_line(stdout, BootstrapCsr(tls.new_csr(key_pem, name)))
    cert = _read_line(stdin, BootstrapCert)
    check_cert(cert.cert_pem, key_pem, hello.ca_pem)
    tls.write_private(state.key_file, key_pem)
    tls.write_private(state.cert_file, cert.cert_pem)
    state.save_settings(hello.agent_id, hello.webhook_url, hello.ca_pem)
    state.add_key(key)
    attached = state.daemon_running()
    info = _attach(state) if attached else _start(state, serve_args)
    port = state.read_int(state.port_file)
    if port is None:
        raise Unavailable("the agent wrote no port")
    return BootstrapReady(port, info.pid, info.epoch, info.version, attached)
