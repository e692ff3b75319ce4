"""Start or attach to an agent: the line-of-JSON exchange over a child's stdin/stdout.

The same exchange runs for the local agent (a child process) and for remote
ones (the child is `ssh HOST -- apsis-agent bootstrap`). Secrets travel only on
the pipe, never on a command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any, TypeVar

from apsis_common import codec
from apsis_common import protocol as p
from apsis_common.errors import ApsisError, ProtocolError
from apsis_common.tls import CertPair, issue

T = TypeVar("T")


class BootstrapError(ApsisError):
    """The agent could not be started or reached; the message says why.

    `returncode` and `stderr` are the child's (ssh's, for a remote agent), when it
    ended, so that a caller can tell an ssh failure from the agent's own error.
    """

    def __init__(self, message: str, returncode: int | None = None, stderr: str = "") -> None:
        super().__init__(message)
        self.returncode = returncode
        self.stderr = stderr


class _Closed(BootstrapError):
    """The child closed its stdout: it is exiting, let it finish to see its status."""


async def _read(proc: asyncio.subprocess.Process, cls: type[T], timeout: float) -> T:
    assert proc.stdout is not None
    while True:
        line = await asyncio.wait_for(proc.stdout.readline(), timeout)
        if not line:
            raise _Closed("the agent closed the bootstrap exchange")
        try:
            plain: Any = json.loads(line)
        except ValueError:
            continue  # a banner or other noise before the exchange
        if isinstance(plain, dict) and "error" in plain:
            raise BootstrapError(str(plain["error"]))
        try:
            return codec.from_plain(cls, plain)
        except ProtocolError as exc:
            raise BootstrapError(f"unexpected bootstrap answer: {exc}") from None


def _write(proc: asyncio.subprocess.Process, message: Any) -> None:
    assert proc.stdin is not None
    if proc.stdin.is_closing():  # ssh already exited: its stderr says why
        raise ConnectionResetError("the agent's side closed the exchange")
    try:
        proc.stdin.write(codec.encode_json(message) + b"\n")
    except RuntimeError as exc:  # uvloop's way of saying the same ("handler is closed")
        raise ConnectionResetError(str(exc)) from None


async def bootstrap(
    argv: list[str], hello: p.BootstrapHello, ca: CertPair, timeout: float = 60.0
) -> p.BootstrapReady:
    """Run the exchange with `argv`; the agent's answer once its daemon is up."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as exc:
        raise BootstrapError(f"cannot run {argv[0]}: {exc.strerror}", 127) from None
    try:
        _write(proc, hello)
        csr = await _read(proc, p.BootstrapCsr, timeout)
        try:
            cert = issue(ca, csr.csr_pem, hello.hosts)
        except ValueError as exc:
            raise BootstrapError(f"bad certificate request from the agent: {exc}") from None
        _write(proc, p.BootstrapCert(cert))
        assert proc.stdin is not None
        await proc.stdin.drain()
        ready = await _read(proc, p.BootstrapReady, timeout)
        proc.stdin.close()
        await asyncio.wait_for(proc.wait(), timeout)
        return ready
    except asyncio.CancelledError:
        # The server is stopping: end the exchange (a daemon it started lives on).
        if proc.returncode is None:
            proc.kill()
        raise
    except (BootstrapError, TimeoutError, ConnectionError) as exc:
        stderr = b""
        if isinstance(exc, _Closed | ConnectionError):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 5)
        if proc.returncode is None:
            proc.kill()
        if proc.stderr is not None:
            with contextlib.suppress(TimeoutError):
                stderr = await asyncio.wait_for(proc.stderr.read(), 5)
        await proc.wait()
        text = stderr.decode(errors="replace").strip()[-4000:]
        detail = text.splitlines()
        reason = str(exc) or f"no answer within {timeout:.0f}s"
        if detail:
            reason += f": {detail[-1]}"
        raise BootstrapError(reason, proc.returncode, text) from None
