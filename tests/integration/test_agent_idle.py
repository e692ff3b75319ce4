"""An idle agent sleeps: nothing runs, so nothing wakes its daemon but its
heartbeat (no scan loop, no uvicorn tick, no idle-watch polling)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from apsis_common import tls
from tests.agent_harness import running_agent, sh
from tests.harness import wait_for


def _wakeups(pid: int) -> int:
    """Voluntary context switches of the daemon's main thread (its event loop)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            return int(line.split()[1])
    raise AssertionError("no voluntary_ctxt_switches")


def test_an_idle_agent_does_not_wake(tmp_path: Path) -> None:
    with running_agent(tmp_path, False, "--heartbeat", "30") as (agent, rx):
        agent.start(("once", sh("echo hi")))  # some work first: then nothing runs
        wait_for(lambda: rx.exited("once"), 10, "the program to end")
        pid = int((agent.state_dir / "daemon.pid").read_text().split()[0])
        time.sleep(1.5)  # the ack of its last events, and the scan going to sleep
        before = _wakeups(pid)
        time.sleep(4.0)
        woke = _wakeups(pid) - before
        # Polling every 75 ms (the old scan) alone would wake it ~50 times here.
        assert woke <= 5, f"an idle agent woke {woke} times in 4 s"


def test_an_idle_connection_stays_open_for_the_next_request(tmp_path: Path) -> None:
    """The server's connection to its agent survives a quiet spell (uvicorn closes
    idle ones after 5 s by default): a burst after it needs no TLS handshake."""
    with running_agent(tmp_path, False) as (agent, _rx):
        context = tls.client_context(agent.ca.cert_pem)
        with (
            socket.create_connection(("127.0.0.1", agent.ready.port)) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as conn,
        ):
            conn.settimeout(5.0)
            for pause in (6.0, 0.0):
                conn.sendall(b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
                answer = conn.recv(65536)
                assert answer.startswith(b"HTTP/1.1 200 "), answer
                time.sleep(pause)
