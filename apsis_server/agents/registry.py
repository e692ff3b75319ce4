"""The agents the server drives: their keys, connections and command queues."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from apsis_common import protocol as p
from apsis_common.auth import Key
from apsis_common.errors import Unavailable
from apsis_common.tls import CertPair, write_private
from apsis_server.agents.bootstrap import BootstrapError, bootstrap
from apsis_server.dispatch import AgentClient, Command, Dispatcher

log = logging.getLogger(__name__)

LOCAL = "local"


@dataclass
class AgentConn:
    """One agent as the server sees it."""

    agent_id: str
    host: str
    user: str | None
    key: Key
    dispatcher: Dispatcher
    state: str = "connecting"
    epoch: int = 0
    version: str = ""
    pid: int = 0
    port: int = 0
    error: str | None = None
    last_heartbeat: float | None = None
    connected: asyncio.Event = field(default_factory=asyncio.Event)


Reconcile = Callable[[str, AgentClient], Awaitable[None]]
Refused = Callable[[str, str], None]
Lost = Callable[[str, float], None]


class Registry:
    """Keeps one connection per agent and hands it the engine's requests."""

    def __init__(
        self,
        state_dir: Path,
        ca: CertPair,
        webhook_url: Callable[[], str],
        local_enabled: bool = True,
        heartbeat: float = 5.0,
        lost_timeout: float = 600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._state_dir = state_dir
        self._ca = ca
        self._webhook_url = webhook_url
        # Set by whoever owns the runs: what to do when an agent refuses a start,
        # and how to compare process lists when an agent (re)connects.
        self.on_refused: Refused = lambda proc_id, error: None
        self.on_lost: Lost = lambda agent_id, silence: None
        self.reconcile: Reconcile | None = None
        self.heartbeat = heartbeat
        self.silence_limit = 3 * heartbeat
        self.lost_timeout = lost_timeout
        self._clock = clock
        self.agents: dict[str, AgentConn] = {}
        self._by_key: dict[str, str] = {}
        if local_enabled:
            self._add(LOCAL, "127.0.0.1", None)

    def _load_key(self, agent_id: str) -> Key:
        path = self._state_dir / "agents" / f"{agent_id}.json"
        if path.exists():
            data = json.loads(path.read_text())
            return Key(data["key_id"], bytes.fromhex(data["secret"]))
        key = Key.generate()
        write_private(path, json.dumps({"key_id": key.key_id, "secret": key.secret.hex()}))
        return key

    def _add(self, agent_id: str, host: str, user: str | None) -> AgentConn:
        key = self._load_key(agent_id)
        dispatcher = Dispatcher(agent_id, lambda proc_id, error: self.on_refused(proc_id, error))
        conn = AgentConn(agent_id, host, user, key, dispatcher)
        self.agents[agent_id] = conn
        self._by_key[key.key_id] = agent_id
        return conn

    # -- what the engine and webhook need ----------------------------------------

    def keys(self) -> dict[str, bytes]:
        return {c.key.key_id: c.key.secret for c in self.agents.values()}

    def agent_for_key(self, key_id: str) -> str | None:
        return self._by_key.get(key_id)

    def choose(self, host: str | None, user: str | None) -> str:
        """The agent to run a program on `host` as `user`."""
        if host is None and user is None and LOCAL in self.agents:
            return LOCAL
        if host is None and user is None:
            raise LookupError("no local agent: agents.local is disabled in the config")
        raise LookupError(
            f"no agent for host {host!r} user {user!r}: remote agents are not configured"
        )

    def start(self, agent_id: str, proc: p.StartProc) -> None:
        self.agents[agent_id].dispatcher.start(proc)

    def command(self, agent_id: str, command: Command) -> None:
        conn = self.agents.get(agent_id)
        if conn is not None:
            conn.dispatcher.command(command)

    async def output(self, agent_id: str, proc_id: str, start: int, stop: int) -> bytes:
        client = self.agents[agent_id].dispatcher.client
        if client is None:
            raise Unavailable(f"agent {agent_id} is not connected")
        return await client.output(proc_id, start, stop)

    def heard_from(self, agent_id: str, now: float) -> None:
        conn = self.agents.get(agent_id)
        if conn is not None:
            conn.last_heartbeat = now
            if conn.state == "disconnected" and conn.dispatcher.client is not None:
                conn.state = "connected"
                log.info("agent %s: heard from again", agent_id)

    # -- connections -------------------------------------------------------------

    async def run(self) -> None:
        """Connect every agent and run its dispatcher, until cancelled."""
        try:
            async with asyncio.TaskGroup() as tasks:
                for conn in self.agents.values():
                    tasks.create_task(conn.dispatcher.run())
                    tasks.create_task(self._keep_connected(conn))
        finally:
            for conn in self.agents.values():
                if conn.dispatcher.client is not None:
                    await conn.dispatcher.client.close()

    async def _keep_connected(self, conn: AgentConn) -> None:
        """Connect, then watch the agent's heartbeats: a silent agent is shown
        disconnected and bootstrapped again (start-or-attach); one silent past the
        lost timeout has its runs given up."""
        delay = 0.5
        while True:
            now = self._clock()
            silence = now - (conn.last_heartbeat or now)
            if conn.dispatcher.client is None or silence > self.silence_limit:
                if conn.state == "connected":
                    log.warning("agent %s: silent for %.0fs", conn.agent_id, silence)
                conn.state = "disconnected" if conn.dispatcher.client else conn.state
                try:
                    await self._connect_local(conn)
                    delay = 0.5
                except BootstrapError as exc:
                    conn.state, conn.error = "disconnected", str(exc)
                    log.error("agent %s: bootstrap failed: %s", conn.agent_id, exc)
                    delay = min(delay * 2, 30.0)
            if conn.last_heartbeat is not None and silence > self.lost_timeout:
                self.on_lost(conn.agent_id, silence)
            await asyncio.sleep(min(delay, self.silence_limit / 3))

    async def _connect_local(self, conn: AgentConn) -> None:
        state_dir = self._state_dir / "local-agent"
        argv = [sys.executable, "-m", "apsis_agent", "bootstrap", "--state-dir", str(state_dir)]
        argv += ["--heartbeat", str(self.heartbeat)]
        hello = p.BootstrapHello(
            agent_id=conn.agent_id,
            key_id=conn.key.key_id,
            secret=conn.key.secret.hex(),
            webhook_url=self._webhook_url(),
            ca_pem=self._ca.cert_pem,
            hosts=(conn.host, "localhost"),
        )
        ready = await bootstrap(argv, hello, self._ca)
        client = AgentClient(f"https://{conn.host}:{ready.port}", conn.key, self._ca.cert_pem)
        if conn.dispatcher.client is not None:
            await conn.dispatcher.client.close()
        conn.state, conn.error = "connected", None
        if conn.last_heartbeat is None:
            # Only the agent's own reports count as hearing from it; this starts the clock.
            conn.last_heartbeat = self._clock()
        conn.epoch, conn.version, conn.pid, conn.port = (
            ready.epoch,
            ready.version,
            ready.pid,
            ready.port,
        )
        log.info(
            "agent %s: %s pid %d port %d epoch %d",
            conn.agent_id,
            "attached to" if ready.attached else "started",
            ready.pid,
            ready.port,
            ready.epoch,
        )
        if self.reconcile is not None:
            await self.reconcile(conn.agent_id, client)
        conn.dispatcher.connected(client)
        conn.connected.set()

    async def agent_started(self, agent_id: str, epoch: int) -> None:
        """An agent (re)started: compare process lists again."""
        conn = self.agents.get(agent_id)
        if conn is None or conn.dispatcher.client is None:
            return
        conn.epoch = epoch
        if self.reconcile is not None:
            await self.reconcile(agent_id, conn.dispatcher.client)
