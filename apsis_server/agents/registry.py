"""The agents the server drives: their keys, connections and command queues.

Theory of operation. There is one `AgentConn` per agent id (see `targets.py`).
Agents are created on first use, by `choose`, by a start or command for a run
restored from the store, or when one reports in; each gets two tasks in the
registry's TaskGroup, its dispatcher and `_keep_connected`. An agent is connected
lazily: its keeper waits until something wants it, then bootstraps it
(start-or-attach, locally or over ssh) or, for a static agent, checks that it
answers. Starts for an agent that is not connected are held here and handed to
its dispatcher once it is; if it cannot be bootstrapped (a permanent ssh error, or
`bootstrap.attempts` failures in a row), the held starts are refused with the
reason, so their runs end in `error` instead of waiting forever. The keeper then
polls the agent's info each heartbeat period, re-bootstraps it when its
heartbeats stop, and reports it lost past the lost timeout. An agent of another
version than the server is drained and, once it has exited (its processes done
and its outbox empty), bootstrapped again.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apsis_common import __version__
from apsis_common import protocol as p
from apsis_common.auth import Key
from apsis_common.errors import ApsisError, Unavailable
from apsis_common.tls import CertPair, write_private
from apsis_server.agents.bootstrap import BootstrapError, bootstrap
from apsis_server.agents.choice import Choice
from apsis_server.agents.groups import pick
from apsis_server.agents.settings import AgentSettings, StaticAgent, check_host, check_user
from apsis_server.agents.ssh import explain
from apsis_server.agents.targets import (
    LOCAL,
    Target,
    bootstrap_argv,
    parse_agent_id,
    remote_command,
)
from apsis_server.dispatch import AgentClient, Command, Dispatcher

log = logging.getLogger(__name__)

__all__ = ["LOCAL", "AgentConn", "Choice", "Registry"]

# Not reachable now: a group skips these members.
UNREACHABLE = ("disconnected", "failed")


@dataclass
class AgentConn:
    """One agent as the server sees it.

    `state`: new (known, never wanted), connecting, connected, disconnected (was
    connected; silent or failing to re-bootstrap), failed (could not be
    bootstrapped), draining (being replaced by an agent of the server's version),
    stopped (known from an earlier server run, not connected now).
    """

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
    target: Target = field(default_factory=lambda: Target("local", "127.0.0.1"))
    static: StaticAgent | None = None
    wanted: asyncio.Event = field(default_factory=asyncio.Event)
    pending: dict[str, p.StartProc] = field(default_factory=dict)
    failures: int = 0
    running: int | None = None  # as the agent reports it
    outbox_pending: int | None = None
    drained_version: str | None = None
    spawned: bool = False
    in_group: bool = False


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
        settings: AgentSettings | None = None,
        clock: Callable[[], float] = time.time,
        version: str = __version__,
    ) -> None:
        self.settings = settings or AgentSettings()
        self._state_dir = state_dir
        self._ca = ca
        self._webhook_url = webhook_url
        self._version = version
        # Set by whoever owns the runs: what to do when an agent refuses a start,
        # and how to compare process lists when an agent (re)connects.
        self.on_refused: Refused = lambda proc_id, error: None
        self.on_lost: Lost = lambda agent_id, silence: None
        self.reconcile: Reconcile | None = None
        # Running (starting, running, stopping) runs per agent id, for least-busy.
        self.busy: Callable[[], Mapping[str, int]] = dict
        self.silence_limit = 3 * self.settings.heartbeat
        self._clock = clock
        self.agents: dict[str, AgentConn] = {}
        self._by_key: dict[str, str] = {}
        self._tasks: asyncio.TaskGroup | None = None
        self._cursors: dict[str, int] = {}
        self._rng = random.Random()
        self._local_user = getpass.getuser()
        if self.settings.local_enabled:
            self._want(self._add(Target("local", "127.0.0.1")))
        for static in self.settings.static.values():
            self._add(Target("static", static.host, static.user, static.name), static)
        self._known()

    # -- agents ------------------------------------------------------------------

    def _load_key(self, agent_id: str, static: StaticAgent | None) -> Key:
        if static is not None:
            try:
                secret = bytes.fromhex(static.secret_file.read_text().strip())
            except (OSError, ValueError) as exc:
                raise ValueError(f"static agent {static.name}: bad secret file: {exc}") from None
            return Key(static.key_id, secret)
        path = self._state_dir / "agents" / f"{agent_id}.json"
        if path.exists():
            data = json.loads(path.read_text())
            return Key(data["key_id"], bytes.fromhex(data["secret"]))
        key = Key.generate()
        write_private(path, json.dumps({"key_id": key.key_id, "secret": key.secret.hex()}))
        return key

    def _add(self, target: Target, static: StaticAgent | None = None) -> AgentConn:
        agent_id = target.agent_id
        key = self._load_key(agent_id, static)
        dispatcher = Dispatcher(agent_id, lambda proc_id, error: self.on_refused(proc_id, error))
        conn = AgentConn(agent_id, target.host, target.user, key, dispatcher, state="new")
        conn.target, conn.static = target, static
        self.agents[agent_id] = conn
        self._by_key[key.key_id] = agent_id
        self._spawn(conn)
        return conn

    def _known(self) -> None:
        """Agents with a key from an earlier run: shown as stopped, their keys valid."""
        for path in sorted((self._state_dir / "agents").glob("*.json")):
            target = parse_agent_id(path.stem)
            if target is not None and target.kind != "local" and path.stem not in self.agents:
                self._add(target).state = "stopped"

    def _get(self, agent_id: str) -> AgentConn | None:
        conn = self.agents.get(agent_id)
        if conn is None:
            target = parse_agent_id(agent_id)
            if target is None or target.kind == "local":
                return None
            conn = self._add(target)
        return conn

    def _want(self, conn: AgentConn) -> AgentConn:
        if not conn.wanted.is_set():
            if conn.state in ("new", "stopped"):
                conn.state = "connecting"
            conn.wanted.set()
        return conn

    def adopt(self, agent_ids: set[str]) -> None:
        """Connect the agents of restored runs (their lost-timeout clock starts now)."""
        for agent_id in sorted(agent_ids):
            conn = self._get(agent_id)
            if conn is not None:
                if conn.last_heartbeat is None:
                    conn.last_heartbeat = self._clock()
                self._want(conn)

    # -- what the engine and webhook need ----------------------------------------

    def keys(self) -> dict[str, bytes]:
        return {c.key.key_id: c.key.secret for c in self.agents.values()}

    def agent_for_key(self, key_id: str) -> str | None:
        return self._by_key.get(key_id)

    def choose(self, host: str | None, user: str | None) -> Choice:
        """The agent to run a program on `host` (a host, alias or group) as `user`, with
        notes for the run log; LookupError or ValueError if there is none (says why)."""
        if user is not None:
            check_user(user)
        if host is None:
            if user is None or user == self._local_user:
                if LOCAL not in self.agents:
                    raise LookupError("no local agent: agents.local is disabled in the config")
                return Choice(LOCAL)
            return Choice(self._want(self._ensure(Target("sudo", "127.0.0.1", user))).agent_id)
        host = self.settings.aliases.get(host, host)
        group = self.settings.groups.get(host)
        if group is None:
            return Choice(self._want(self._for_host(host, user)).agent_id)
        members = {h: self._for_host(h, user) for h in group.hosts}
        for conn in members.values():
            conn.in_group = True
            self._want(conn)  # connect every member, so that an unusable one shows
        unusable = {
            h: f"{c.state}: {c.error}" if c.error else c.state
            for h, c in members.items()
            if c.state in UNREACHABLE
        }
        busy = self.busy()
        load = {h: busy.get(c.agent_id, 0) for h, c in members.items()}
        chosen = pick(group, unusable, load, self._cursors.get(group.name, 0), self._rng)
        self._cursors[group.name] = chosen.cursor
        return Choice(members[chosen.host].agent_id, chosen.notes)

    def _for_host(self, host: str, user: str | None) -> AgentConn:
        for static in self.settings.static.values():
            if host in (static.host, static.name) and user in (None, static.user):
                return self.agents[f"static:{static.name}"]
        return self._ensure(Target("ssh", check_host(host), user))

    def _ensure(self, target: Target) -> AgentConn:
        return self.agents.get(target.agent_id) or self._add(target)

    def start(self, agent_id: str, proc: p.StartProc) -> None:
        conn = self._get(agent_id)
        if conn is None:
            self.on_refused(proc.proc_id, f"no agent {agent_id}")
            return
        if conn.state == "connected":
            conn.dispatcher.start(proc)
        else:
            conn.pending[proc.proc_id] = proc
            self._want(conn)

    def command(self, agent_id: str, command: Command) -> None:
        conn = self._get(agent_id)
        if conn is not None:
            conn.dispatcher.command(command)
            self._want(conn)

    async def output(self, agent_id: str, proc_id: str, start: int, stop: int) -> bytes:
        conn = self.agents.get(agent_id)
        client = conn.dispatcher.client if conn is not None else None
        if client is None:
            raise Unavailable(f"agent {agent_id} is not connected")
        return await client.output(proc_id, start, stop)

    def heard_from(self, agent_id: str, now: float) -> None:
        conn = self.agents.get(agent_id)
        if conn is not None:
            conn.last_heartbeat = now
            self._want(conn)
            if conn.state == "disconnected" and conn.dispatcher.client is not None:
                conn.state = "connected"
                log.info("agent %s: heard from again", agent_id)

    # -- connections -------------------------------------------------------------

    async def run(self) -> None:
        """Connect agents as they are wanted and run their dispatchers, until cancelled."""
        try:
            async with asyncio.TaskGroup() as tasks:
                self._tasks = tasks
                for conn in self.agents.values():
                    self._spawn(conn)
                await asyncio.Event().wait()
        finally:
            self._tasks = None
            for conn in self.agents.values():
                conn.spawned = False
                if conn.dispatcher.client is not None:
                    await conn.dispatcher.client.close()

    def _spawn(self, conn: AgentConn) -> None:
        if self._tasks is not None and not conn.spawned:
            conn.spawned = True
            self._tasks.create_task(conn.dispatcher.run())
            self._tasks.create_task(self._keep_connected(conn))

    async def _keep_connected(self, conn: AgentConn) -> None:
        """Connect once wanted, then watch the agent: a silent agent is shown
        disconnected and bootstrapped again (start-or-attach); one silent past the
        lost timeout has its runs given up; one of another version is replaced."""
        await conn.wanted.wait()
        delay = self.settings.retry_delay
        while True:
            now = self._clock()
            silence = now - (conn.last_heartbeat or now)
            pause = self.settings.heartbeat
            if silence > self.silence_limit and self._idle(conn):
                await self._stopped(conn)
                continue
            if await self._needs_connect(conn, silence):
                try:
                    await self._connect(conn)
                    conn.failures, delay = 0, self.settings.retry_delay
                except BootstrapError as exc:
                    if not self._failed(conn, exc):
                        conn.failures = 0
                        conn.wanted.clear()  # nothing needs it now: wait for the next use
                        await conn.wanted.wait()
                        continue
                    pause = delay * self._rng.uniform(0.8, 1.2)
                    delay = min(max(delay, 0.1) * 2, 30.0)
            else:
                await self._poll(conn)
            if conn.last_heartbeat is not None and silence > self.settings.lost_timeout:
                self.on_lost(conn.agent_id, silence)
            await asyncio.sleep(pause)

    def _idle(self, conn: AgentConn) -> bool:
        """Whether a silent agent may have stopped itself (`idle_stop`) with nothing lost."""
        return (
            self.settings.idle_stop is not None
            and conn.static is None
            and conn.state == "connected"
            and not conn.pending
            and self.busy().get(conn.agent_id, 0) == 0
        )

    async def _stopped(self, conn: AgentConn) -> None:
        """Forget the connection of an agent that stopped when idle, until it is needed."""
        log.info("agent %s: silent and idle: taken as stopped (idle_stop)", conn.agent_id)
        conn.state, conn.last_heartbeat = "stopped", None
        conn.wanted.clear()
        conn.connected.clear()
        client, conn.dispatcher.client = conn.dispatcher.client, None
        if client is not None:
            await client.close()
        await conn.wanted.wait()

    async def _needs_connect(self, conn: AgentConn, silence: float) -> bool:
        if conn.dispatcher.client is None:
            return True
        if conn.state == "draining":
            return not await self._answers(conn.dispatcher.client)
        if silence > self.silence_limit:
            if conn.state == "connected":
                log.warning("agent %s: silent for %.0fs", conn.agent_id, silence)
            conn.state = "disconnected"
            return True
        return False

    async def _answers(self, client: AgentClient) -> bool:
        try:
            await client.info()
        except ApsisError:
            return False
        return True

    def _failed(self, conn: AgentConn, exc: BootstrapError) -> bool:
        """Record a failed bootstrap; refuse held starts when retrying is pointless.

        Whether to keep trying in the background: yes while the agent has runs or
        is in a group (so that a member coming back is seen), else no.
        """
        conn.failures += 1
        reason, permanent = self._explain(conn, exc)
        conn.error = reason
        conn.state = "disconnected" if conn.dispatcher.client is not None else "failed"
        log.error("agent %s: bootstrap failed (%d): %s", conn.agent_id, conn.failures, reason)
        if permanent or conn.failures >= self.settings.attempts:
            pending, conn.pending = conn.pending, {}
            for proc_id in pending:
                self.on_refused(proc_id, reason)
        return bool(conn.pending) or conn.in_group or conn.dispatcher.client is not None

    def _explain(self, conn: AgentConn, exc: BootstrapError) -> tuple[str, bool]:
        target = conn.target
        if target.kind == "ssh":
            command = remote_command(self.settings, target.host)
            return explain(exc.returncode, exc.stderr, str(exc), target.host, target.user, command)
        if target.kind == "sudo":
            return f"cannot start the agent of user {target.user} with sudo: {exc}", True
        return str(exc), False

    async def _connect(self, conn: AgentConn) -> None:
        if conn.static is not None:
            ready = await self._reach_static(conn, conn.static)
        else:
            ready = await self._bootstrap(conn)
        client = AgentClient(conn.target.url(ready.port), conn.key, self._ca_for(conn))
        if conn.dispatcher.client is not None:
            await conn.dispatcher.client.close()
        conn.error = None
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
            "agent %s: %s pid %d port %d epoch %d version %s",
            conn.agent_id,
            "attached to" if ready.attached else "started",
            ready.pid,
            ready.port,
            ready.epoch,
            ready.version,
        )
        if self.reconcile is not None:
            await self.reconcile(conn.agent_id, client)
        conn.dispatcher.connected(client)
        if await self._upgrade(conn, client):
            return
        conn.state = "connected"
        pending, conn.pending = conn.pending, {}
        for proc in pending.values():
            conn.dispatcher.start(proc)
        conn.connected.set()

    async def _upgrade(self, conn: AgentConn, client: AgentClient) -> bool:
        """Drain an agent of another version (it exits once idle); whether it drains."""
        if (
            not self.settings.upgrade
            or conn.static is not None
            or conn.version == self._version
            or conn.drained_version == conn.version
        ):
            if conn.version != self._version:
                conn.error = f"agent version {conn.version}, server {self._version}"
            return False
        try:
            await client.request("POST", "/drain")
        except ApsisError as exc:
            log.warning("agent %s: cannot drain: %s", conn.agent_id, exc)
            return False
        log.info(
            "agent %s: version %s, server %s: draining it to replace it",
            conn.agent_id,
            conn.version,
            self._version,
        )
        conn.drained_version = conn.version
        conn.state = "draining"
        conn.connected.clear()
        return True

    def _ca_for(self, conn: AgentConn) -> str:
        if conn.static is not None and conn.static.ca_file is not None:
            return conn.static.ca_file.read_text()
        return self._ca.cert_pem

    async def _bootstrap(self, conn: AgentConn) -> p.BootstrapReady:
        target = conn.target
        hosts = (target.host, "localhost") if target.kind in ("local", "sudo") else (target.host,)
        hello = p.BootstrapHello(
            agent_id=conn.agent_id,
            key_id=conn.key.key_id,
            secret=conn.key.secret.hex(),
            webhook_url=self._webhook_url(),
            ca_pem=self._ca.cert_pem,
            hosts=hosts,
        )
        local_state = str(self._state_dir / "local-agent")
        argv = bootstrap_argv(self.settings, target, local_state)
        return await bootstrap(argv, hello, self._ca, self.settings.bootstrap_timeout)

    async def _reach_static(self, conn: AgentConn, static: StaticAgent) -> p.BootstrapReady:
        try:
            client = AgentClient(conn.target.url(static.port), conn.key, self._ca_for(conn), 10)
        except (OSError, ValueError) as exc:
            raise BootstrapError(f"static agent {static.name}: bad CA file: {exc}") from None
        try:
            info = await client.info()
        except ApsisError as exc:
            raise BootstrapError(f"static agent {static.name}: {exc}") from None
        finally:
            await client.close()
        if info.agent_id != conn.agent_id:
            raise BootstrapError(
                f"static agent {static.name} calls itself {info.agent_id!r}, "
                f"expected {conn.agent_id!r} in its agent.json"
            )
        return p.BootstrapReady(static.port, info.pid, info.epoch, info.version, True)

    async def _poll(self, conn: AgentConn) -> None:
        """What the agent says about itself: version, load, outbox."""
        client = conn.dispatcher.client
        if client is None:
            return
        with contextlib.suppress(ApsisError):
            info = await client.info()
            conn.running, conn.outbox_pending = info.running, info.outbox_pending
            if info.epoch != conn.epoch or info.version != conn.version:
                conn.epoch, conn.version, conn.pid = info.epoch, info.version, info.pid
                if conn.state == "connected":
                    await self._upgrade(conn, client)

    async def agent_started(self, agent_id: str, epoch: int) -> None:
        """An agent (re)started: compare process lists again."""
        conn = self.agents.get(agent_id)
        if conn is None or conn.dispatcher.client is None:
            return
        conn.epoch = epoch
        if self.reconcile is not None:
            await self.reconcile(agent_id, conn.dispatcher.client)


def view(conn: AgentConn, running: int) -> dict[str, Any]:
    """An agent as `GET /api/v1/agents` shows it (times as epoch seconds)."""
    kind = conn.target.kind
    return {
        "agent_id": conn.agent_id,
        "kind": kind,
        "host": conn.host,
        "user": conn.user,
        "state": conn.state,
        "version": conn.version,
        "epoch": conn.epoch,
        "pid": conn.pid,
        "port": conn.port,
        "running": running,
        "agent_running": conn.running,
        "outbox_pending": conn.outbox_pending,
        "pending_starts": len(conn.pending),
        "last_heartbeat": conn.last_heartbeat,
        "error": conn.error,
    }
