"""Talking to the local daemon from the command line: status, stop, drain, readiness.

Requests are signed with the current key from the state dir and sent over HTTPS
to the daemon's bind address, verifying its certificate against the CA stored
there (the certificate names the hosts the server uses, so the host name is not
checked for this loopback call; the chain is).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

import httpx

from apsis_agent.state import StateDir
from apsis_common import auth, codec, protocol, tls
from apsis_common.errors import ApsisError, Unavailable
from apsis_common.protocol import AgentInfo


def call(state: StateDir, method: str, path: str, timeout: float = 5.0) -> httpx.Response:
    """A signed request to the local daemon; Unavailable if it does not answer."""
    address = state.local_address()
    if address is None:
        raise Unavailable("the agent is not running (no port file)")
    host, port = address
    keys = state.load_keys()
    context = tls.client_context(state.ca_file.read_text())
    context.check_hostname = False
    headers = auth.sign(keys.current, method, path, b"")
    headers["accept"] = protocol.MSGPACK
    netloc = f"[{host}]" if ":" in host else host
    try:
        with httpx.Client(verify=context, timeout=timeout, trust_env=False) as client:
            return client.request(method, f"https://{netloc}:{port}{path}", headers=headers)
    except httpx.HTTPError as exc:
        raise Unavailable(f"the agent does not answer on {host}:{port}: {exc}") from exc


def agent_info(state: StateDir) -> AgentInfo:
    response = call(state, "GET", "/agent")
    if response.status_code != 200:
        raise Unavailable(f"GET /agent: status {response.status_code}")
    return codec.decode(AgentInfo, response.content)


def wait_ready(state: StateDir, timeout: float, alive: Callable[[], str | None]) -> AgentInfo:
    """AgentInfo once the daemon answers a signed request with the current key.

    `alive` returns a message when waiting is pointless (the daemon died).
    """
    deadline = time.monotonic() + timeout
    while True:
        problem = alive()
        if problem is not None:
            raise Unavailable(problem)
        try:
            return agent_info(state)
        except (ApsisError, OSError, ValueError) as exc:
            if time.monotonic() > deadline:
                raise Unavailable(f"the agent did not become ready: {exc}") from exc
        time.sleep(0.05)


def stop(state: StateDir, timeout: float = 15.0) -> int:
    """SIGTERM the daemon and wait until its lock is free; its pid."""
    pid = state.read_int(state.pid_file)
    if pid is None or not state.daemon_running():
        raise Unavailable("the agent is not running")
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while state.daemon_running():
        if time.monotonic() > deadline:
            raise Unavailable(f"the agent (pid {pid}) did not stop within {timeout:.0f} s")
        time.sleep(0.05)
    return pid


def drain(state: StateDir) -> AgentInfo:
    response = call(state, "POST", "/drain")
    if response.status_code != 200:
        raise Unavailable(f"POST /drain: status {response.status_code}")
    return codec.decode(AgentInfo, response.content)
