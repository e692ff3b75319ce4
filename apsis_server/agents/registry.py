"""The agents the server drives: their keys, connections and command queues.

Theory of operation. There is one `AgentConn` per agent id (see `targets.py`).
Agents are created on first use, by `choose`, by a start or command for a run
restored from the store, or when one reports in; each gets two tasks in the
registry's TaskGroup, its dispatcher and its keeper (`keeper.py`), which
connects it lazily, once something wants it, and watches it from then on.
Starts for an agent that is not connected are held here and handed to its
dispatcher once it is; if it cannot be bootstrapped, the keeper refuses the held
starts with the reason, so their runs end in `error` instead of waiting forever.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import logging
import random
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from apsis_common import __version__
from apsis_common import protocol as p
from apsis_common.auth import Key
from apsis_common.errors import Unavailable
from apsis_common.names import check_host, check_user
from apsis_common.tls import CertPair, write_private
from apsis_server.agents.choice import Choice
from apsis_server.agents.conn import AgentConn, AgentState
from apsis_server.agents.dispatch import Command, Dispatcher
from apsis_server.agents.groups import pick
from apsis_server.agents.keeper import Keeper
from apsis_server.agents.reports import Reports
from apsis_server.agents.settings import AgentSettings, StaticAgent
from apsis_server.agents.targets import LOCAL, Target, parse_agent_id

log = logging.getLogger(__name__)

__all__ = ["LOCAL", "Choice", "Registry", "Reports"]


# Not reachable now: a group skips these members.
UNREACHABLE = (AgentState.DISCONNECTED, AgentState.FAILED)


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
        *,
        epoch: Callable[[], int | None],
        local_name: str = "",
    ) -> None:
        """`epoch`: what every request that changes something on an agent carries
        (`Leadership.agent_epoch`: None for the only server, which fences nothing). `local_name`:
        this server's name among servers sharing a database, which names its local
        agent `local:NAME` (another server's local agent is on that server's host:
        only that server can reach it); "" for the only server (`local`)."""
        self._local = Target("local", "127.0.0.1", name=local_name)
        self.settings = settings or AgentSettings()
        self._state_dir = state_dir
        # Whoever owns the runs, while `run` runs: what the agents' tasks report.
        self._reports: Reports | None = None
        self._clock = clock
        self.agents: dict[str, AgentConn] = {}
        self._by_key: dict[str, str] = {}
        self._tasks: asyncio.TaskGroup | None = None
        self._cursors: dict[str, int] = {}
        self._rng = random.Random()
        self._local_user = getpass.getuser()
        # Static agents by host name and by agent name, in config order: a choice
        # among hundreds of them looks up, not through every one.
        self._statics: dict[str, list[StaticAgent]] = {}
        for static in self.settings.static.values():
            for name in dict.fromkeys((static.host, static.name)):
                self._statics.setdefault(name, []).append(static)
        self._keeper = Keeper(
            self.settings,
            state_dir,
            ca,
            webhook_url,
            version,
            clock=clock,
            rng=self._rng,
            epoch=epoch,
            local_id=self._local.agent_id,
        )
        self._populate()

    def _populate(self) -> None:
        if self.settings.local_enabled:
            self._want(self._add(self._local))
        for static in self.settings.static.values():
            self._add(Target("static", static.host, static.user, static.name), static)
        self._known()

    def reset(self) -> None:
        """Forget every connection and every request not yet sent (a server that
        steps down, or takes the lead): agents are connected afresh, from the runs
        the store holds. Only while `run` is not running."""
        assert self._tasks is None, "reset a registry that is running"
        self.agents, self._by_key, self._cursors = {}, {}, {}
        self._populate()

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
        dispatcher = Dispatcher(agent_id)
        conn = AgentConn(agent_id, target.host, target.user, key, dispatcher, state=AgentState.NEW)
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
                self._add(target).state = AgentState.STOPPED

    def _get(self, agent_id: str) -> AgentConn | None:
        conn = self.agents.get(agent_id)
        if conn is None:
            target = parse_agent_id(agent_id)
            if target is None or agent_id == LOCAL:
                return None
            conn = self._add(target)
        return conn

    def _want(self, conn: AgentConn) -> AgentConn:
        if not conn.wanted.is_set():
            if conn.state in (AgentState.NEW, AgentState.STOPPED):
                conn.state = AgentState.CONNECTING
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

    def choose(
        self, host: str | None, user: str | None, busy: Callable[[], Mapping[str, int]]
    ) -> Choice:
        """The agent to run a program on `host` (a host, alias or group) as `user`, with
        notes for the run log; LookupError or ValueError if there is none (says why).
        `busy`: the running runs per agent id, for least-busy groups."""
        if user is not None:
            check_user(user)
        if host is None:
            if user is None or user == self._local_user:
                if self._local.agent_id not in self.agents:
                    raise LookupError("no local agent: agents.local is disabled in the config")
                return Choice(self._local.agent_id)
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
        running = busy()
        load = {h: running.get(c.agent_id, 0) for h, c in members.items()}
        chosen = pick(group, unusable, load, self._cursors.get(group.name, 0), self._rng)
        self._cursors[group.name] = chosen.cursor
        return Choice(members[chosen.host].agent_id, chosen.notes)

    def _for_host(self, host: str, user: str | None) -> AgentConn:
        for static in self._statics.get(host, ()):
            if user in (None, static.user):
                return self.agents[f"static:{static.name}"]
        # ssh logs in as this user when none is named: naming it is the same account,
        # so the same agent (one state dir, one daemon, one event sequence).
        account = None if user == self._local_user else user
        return self._ensure(Target("ssh", check_host(host), account))

    def _ensure(self, target: Target) -> AgentConn:
        return self.agents.get(target.agent_id) or self._add(target)

    def start(self, agent_id: str, proc: p.StartProc) -> None:
        """Send a start to an agent, once it is connected; LookupError if there is no
        such agent."""
        conn = self._get(agent_id)
        if conn is None:
            raise LookupError(f"no agent {agent_id}")
        if conn.state == AgentState.CONNECTED:
            conn.dispatcher.start(proc)
        else:
            conn.pending[proc.proc_id] = proc
            self._want(conn)

    def withdraw(self, agent_id: str, proc_id: str) -> None:
        """Forget a start not yet sent to the agent: its run ended before it left."""
        conn = self.agents.get(agent_id)
        if conn is not None:
            conn.pending.pop(proc_id, None)
            conn.dispatcher.withdraw(proc_id)

    def command(self, agent_id: str, command: Command) -> None:
        conn = self._get(agent_id)
        if conn is not None:
            conn.dispatcher.command(command)
            self._want(conn)

    async def output(
        self, agent_id: str, proc_id: str, start: int, stop: int, fd: int = 1
    ) -> bytes:
        conn = self.agents.get(agent_id)
        client = conn.dispatcher.client if conn is not None else None
        if client is None:
            raise Unavailable(f"agent {agent_id} is not connected")
        return await client.output(proc_id, start, stop, fd)

    def heard_from(self, agent_id: str, now: float, info: p.AgentInfo | None = None) -> None:
        """A batch from the agent (a heartbeat, maybe with what it says of itself)."""
        conn = self.agents.get(agent_id)
        if conn is not None:
            conn.last_heartbeat = now
            if info is not None and info.agent_id == agent_id:
                conn.info = (now, info)  # the keeper reads it instead of asking
            self._want(conn)
            if conn.state == AgentState.DISCONNECTED and conn.dispatcher.client is not None:
                conn.state = AgentState.CONNECTED
                log.info("agent %s: heard from again", agent_id)

    # -- connections -------------------------------------------------------------

    async def run(self, reports: Reports) -> None:
        """Connect agents as they are wanted and run their dispatchers, until
        cancelled; what their tasks learn goes to `reports`."""
        self._reports = reports
        try:
            async with asyncio.TaskGroup() as tasks:
                self._tasks = tasks
                for conn in self.agents.values():
                    self._spawn(conn)
                await asyncio.Event().wait()
        finally:
            self._tasks = None
            self._reports = None
            for conn in self.agents.values():
                conn.spawned = False
                if conn.dispatcher.client is not None:
                    await conn.dispatcher.client.close()

    def _spawn(self, conn: AgentConn) -> None:
        # Agents added while `run` runs get their tasks at once; others when it starts.
        if self._tasks is not None and self._reports is not None and not conn.spawned:
            conn.spawned = True
            self._tasks.create_task(conn.dispatcher.run(self._reports))
            self._tasks.create_task(self._keeper.keep(conn, self._reports))

    async def agent_started(self, agent_id: str, epoch: int) -> None:
        """An agent (re)started: compare process lists again."""
        conn = self.agents.get(agent_id)
        if conn is None or conn.dispatcher.client is None:
            return
        conn.epoch = epoch
        if self._reports is not None:
            await self._reports.reconcile(agent_id, conn.dispatcher.client)
