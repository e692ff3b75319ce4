"""Keeping agents connected: bootstrap each once wanted, watch it, replace it, report it lost.

Theory of operation. An agent is connected lazily: its keeper task waits until
something wants it, then bootstraps it (start-or-attach, locally or over ssh)
or, for a static agent, checks that it answers. Once connected, the process
lists are compared (reconcile) and the starts held for it go to its dispatcher.
If it cannot be bootstrapped (a permanent ssh error, or `bootstrap.attempts`
failures in a row), the held starts are refused with the reason, so their runs
end in `error` instead of waiting forever. The keeper then polls the agent's
info each heartbeat period, re-bootstraps it when its heartbeats stop, and
reports it lost past the lost timeout. An agent of another version than the
server is drained and, once it has exited (its processes done and its outbox
empty), bootstrapped again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from pathlib import Path

from apsis_common import protocol as p
from apsis_common.errors import ApsisError, NotFound
from apsis_common.tls import CertPair
from apsis_server.agents.bootstrap import BootstrapError, bootstrap
from apsis_server.agents.client import AgentClient
from apsis_server.agents.conn import AgentConn, AgentState
from apsis_server.agents.reports import Reports
from apsis_server.agents.settings import AgentSettings, StaticAgent
from apsis_server.agents.ssh import explain
from apsis_server.agents.targets import bootstrap_argv, remote_command

log = logging.getLogger(__name__)


class Keeper:
    """Keeps a registry's agents connected: one `keep` task per agent."""

    def __init__(
        self,
        settings: AgentSettings,
        state_dir: Path,
        ca: CertPair,
        webhook_url: Callable[[], str],
        version: str,
        *,
        clock: Callable[[], float],
        rng: random.Random,
        epoch: Callable[[], int | None],
        local_id: str,
    ) -> None:
        self.settings = settings
        self.silence_limit = 3 * settings.heartbeat
        self._state_dir = state_dir
        self._ca = ca
        self._webhook_url = webhook_url
        self._version = version
        self._clock = clock
        self._rng = rng
        self._epoch = epoch  # what every request to an agent carries (client.py)
        self._local_id = local_id  # this server's own local agent

    async def keep(self, conn: AgentConn, reports: Reports) -> None:
        """Connect once wanted, then watch the agent: a silent agent is shown
        disconnected and bootstrapped again (start-or-attach); one silent past the
        lost timeout has its runs given up; one of another version is replaced.
        What it learns goes to `reports`."""
        await conn.wanted.wait()
        delay = self.settings.retry_delay
        while True:
            now = self._clock()
            silence = now - (conn.last_heartbeat or now)
            pause = self.settings.heartbeat
            if silence > self.silence_limit and self._idle(conn, reports):
                await self._stopped(conn)
                continue
            if await self._needs_connect(conn, silence):
                try:
                    await self._connect_guarded(conn, reports)
                    conn.failures, delay = 0, self.settings.retry_delay
                except BootstrapError as exc:
                    if not self._failed(conn, exc, reports):
                        conn.failures = 0
                        conn.wanted.clear()  # nothing needs it now: wait for the next use
                        await conn.wanted.wait()
                        continue
                    pause = delay * self._rng.uniform(0.8, 1.2)
                    delay = min(max(delay, 0.1) * 2, 30.0)
            else:
                await self._poll(conn)
            if conn.last_heartbeat is not None and silence > self.settings.lost_timeout:
                reports.lost(conn.agent_id, silence)
            await asyncio.sleep(pause)

    async def _connect_guarded(self, conn: AgentConn, reports: Reports) -> None:
        """Connect; a failure nobody foresaw is a failed attempt too, logged with its
        traceback, and never the end of this task (nor of the server's others)."""
        try:
            await self._connect(conn, reports)
        except (BootstrapError, asyncio.CancelledError):
            raise
        except Exception as exc:
            log.exception("agent %s: connecting failed", conn.agent_id)
            raise BootstrapError(f"internal error while connecting: {exc!r}") from exc

    def _idle(self, conn: AgentConn, reports: Reports) -> bool:
        """Whether a silent agent may have stopped itself (`idle_stop`) with nothing lost."""
        return (
            self.settings.idle_stop is not None
            and conn.static is None
            and conn.state == AgentState.CONNECTED
            and not conn.pending
            and reports.busy().get(conn.agent_id, 0) == 0
        )

    async def _stopped(self, conn: AgentConn) -> None:
        """Forget the connection of an agent that stopped when idle, until it is needed."""
        log.info("agent %s: silent and idle: taken as stopped (idle_stop)", conn.agent_id)
        conn.state, conn.last_heartbeat = AgentState.STOPPED, None
        conn.wanted.clear()
        conn.connected.clear()
        client, conn.dispatcher.client = conn.dispatcher.client, None
        if client is not None:
            await client.close()
        await conn.wanted.wait()

    async def _needs_connect(self, conn: AgentConn, silence: float) -> bool:
        if conn.dispatcher.client is None:
            return True
        if conn.state == AgentState.DRAINING:
            return not await self._answers(conn.dispatcher.client)
        if silence > self.silence_limit:
            if conn.state == AgentState.CONNECTED:
                log.warning("agent %s: silent for %.0fs", conn.agent_id, silence)
            conn.state = AgentState.DISCONNECTED
            return True
        return False

    async def _answers(self, client: AgentClient) -> bool:
        try:
            await client.info()
        except ApsisError:
            return False
        return True

    def _failed(self, conn: AgentConn, exc: BootstrapError, reports: Reports) -> bool:
        """Record a failed bootstrap; refuse held starts when retrying is pointless.

        Whether to keep trying in the background: yes while the agent has runs or
        is in a group (so that a member coming back is seen), else no.
        """
        conn.failures += 1
        reason, permanent = self._explain(conn, exc)
        conn.error = reason
        conn.state = (
            AgentState.DISCONNECTED if conn.dispatcher.client is not None else AgentState.FAILED
        )
        log.error("agent %s: bootstrap failed (%d): %s", conn.agent_id, conn.failures, reason)
        if permanent or conn.failures >= self.settings.attempts:
            pending, conn.pending = conn.pending, {}
            for proc_id in pending:
                reports.refused(proc_id, reason)
        return bool(conn.pending) or conn.in_group or conn.dispatcher.client is not None

    def _explain(self, conn: AgentConn, exc: BootstrapError) -> tuple[str, bool]:
        target = conn.target
        if target.kind == "ssh":
            command = remote_command(self.settings, target.host)
            return explain(exc.returncode, exc.stderr, str(exc), target.host, target.user, command)
        if target.kind == "sudo":
            return f"cannot start the agent of user {target.user} with sudo: {exc}", True
        if target.kind == "local" and conn.agent_id != self._local_id:
            return str(exc), True
        return str(exc), False

    async def _connect(self, conn: AgentConn, reports: Reports) -> None:
        if conn.target.kind == "local" and conn.agent_id != self._local_id:
            raise BootstrapError(
                f"{conn.agent_id} is another server's local agent, on that server's host: "
                "only that server can reach it"
            )
        if conn.static is not None:
            ready = await self._reach_static(conn, conn.static)
        else:
            ready = await self._bootstrap(conn)
        client = AgentClient(
            conn.target.url(ready.port), conn.key, self._ca_for(conn), epoch=self._epoch
        )
        await self._follow_me(conn, client, ready.version)
        old, conn.dispatcher.client = conn.dispatcher.client, None  # none until reconciled
        if old is not None:
            await old.close()
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
        await reports.reconcile(conn.agent_id, client)
        conn.dispatcher.connected(client)
        if await self._upgrade(conn, client):
            return
        conn.state = AgentState.CONNECTED
        pending, conn.pending = conn.pending, {}
        for proc in pending.values():
            conn.dispatcher.start(proc)
        conn.connected.set()

    async def _follow_me(self, conn: AgentConn, client: AgentClient, version: str) -> None:
        """Before anything else, tell the agent who leads: it fences older leaders
        and sends its events here (a static agent still reporting to a server that
        led before, say)."""
        try:
            await client.follow_me(self._webhook_url())
        except NotFound:
            log.warning(
                "agent %s: version %s cannot be told who leads (no PUT /leader); "
                "its events go to the webhook it was given",
                conn.agent_id,
                version,
            )
        except ApsisError as exc:
            await client.close()
            raise BootstrapError(f"agent {conn.agent_id}: {exc}") from None

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
        conn.state = AgentState.DRAINING
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
            client = AgentClient(
                conn.target.url(static.port), conn.key, self._ca_for(conn), 10, epoch=self._epoch
            )
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
        """What the agent says about itself: version, load, outbox (sent with its
        heartbeats; an agent of an older version is asked)."""
        client = conn.dispatcher.client
        if client is None:
            return
        with contextlib.suppress(ApsisError):
            told = conn.info
            fresh = told is not None and self._clock() - told[0] <= 2 * self.settings.heartbeat
            info = told[1] if told is not None and fresh else await client.info()
            conn.running, conn.outbox_pending = info.running, info.outbox_pending
            if info.epoch != conn.epoch or info.version != conn.version:
                conn.epoch, conn.version, conn.pid = info.epoch, info.version, info.pid
                if conn.state == AgentState.CONNECTED:
                    await self._upgrade(conn, client)
