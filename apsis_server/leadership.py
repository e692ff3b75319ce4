"""Who leads: the lease in the database, renewed before its deadline; leading, and
stepping down the moment the lease can no longer be vouched for.

Theory of operation
-------------------
With a PostgreSQL store, any number of servers share one database and one of them
leads (spec/06-scale-out.md). A server tries to take the lease every `TRY_EVERY`
seconds (store/lease.py has the lease and its timings). Holding it, it runs
`lead(epoch)`: it restores the unfinished runs, connects their agents and acts —
plans, starts, stops, applies agents' events — while a renewer pushes the deadline
forward every `RENEW_EVERY` seconds. The leader's own deadline is the monotonic time
taken *before* sending its last successful renewal, plus the TTL, less `MARGIN`: the
database's deadline can only be later. When a renewal fails (the lease was taken,
or the database cannot be reached) and that deadline passes, `lead` is cancelled:
the server stops acting at once and goes back to standing by, its memory of runs
dropped (the store is the truth), before any other server can take the lease.

Fencing makes that safe even when a deposed leader does not notice in time (its
event loop stalled, say): every store write checks the epoch in its transaction,
and every request to an agent carries the epoch, which agents refuse once they have
seen a newer one. A standby serves reads from the database; writes are answered by
`Gate` below with an error that names the leader.

With SQLite there is no lease: the one server leads from the start, at epoch 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Protocol

from starlette.types import ASGIApp, Receive, Scope, Send

from apsis_common.errors import Unavailable
from apsis_server.api.gate import refuse
from apsis_server.store.lease import (
    MARGIN,
    RENEW_EVERY,
    TRY_EVERY,
    TTL,
    Leader,
    Lease,
    Role,
    Server,
)

log = logging.getLogger(__name__)

Lead = Callable[[int], Coroutine[None, None, None]]


class LeaseStore(Protocol):
    """The lease as the database holds it (store/lease.py's `PostgresLease`)."""

    def acquire(self, holder: str, url: str, ttl: float = TTL) -> Lease | None: ...

    def renew(self, holder: str, epoch: int, ttl: float = TTL) -> object | None: ...

    def release(self, holder: str, epoch: int) -> None: ...

    def current(self) -> Leader | None: ...

    def heartbeat(self, server_id: str, url: str, role: Role, epoch: int | None) -> None: ...

    def servers(self, seen_within: float | None = None) -> list[Server]: ...


class Leadership:
    """This server's part in leading: standing by, or leading under an epoch."""

    def __init__(
        self,
        lease: LeaseStore | None,
        server_id: str,
        url: str,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`lease` None: the only server (SQLite), which leads at epoch 0."""
        self._lease = lease
        self.server_id = server_id
        # The lease's holder name: new for each process, so a server restarted under
        # the same id gets a new epoch, which fences its previous incarnation.
        self._holder = f"{server_id}/{secrets.token_hex(4)}"
        self.url = url
        self._clock = clock
        # The current holding's epoch, while this server leads.
        self.epoch: int | None = None
        # Leading, and done taking over (runs restored): writes may come in.
        self.ready = False
        # Who leads, as last seen while standing by.
        self.leader: Leader | None = None
        self.deadline: float | None = None  # monotonic

    @property
    def leading(self) -> bool:
        return self.epoch is not None

    def agent_epoch(self) -> int | None:
        """What requests to agents carry (apsis_agent/fence.py): this server's epoch
        while it leads, -1 standing by; None without a lease (SQLite: the only
        server has no one to fence)."""
        if self._lease is None:
            return None
        return self.epoch if self.epoch is not None else -1

    def seconds_left(self) -> float | None:
        """Seconds until the leader stops acting unless it renews (0 standing by);
        None without a lease (SQLite)."""
        if self._lease is None:
            return None
        if self.deadline is None or self.epoch is None:
            return 0.0
        return max(0.0, self.deadline - self._clock())

    def fence(self) -> int | None:
        """The epoch every store write must still hold (None: not leading)."""
        return self.epoch

    async def survey(self) -> tuple[Leader | None, list[Server]]:
        """Who leads, and every server seen in the last minute (by the database; with
        SQLite, this one)."""
        if self._lease is None:
            this = Server(self.server_id, self.url, Role.LEADER, 0, datetime.now(UTC))
            return Leader(0, self.server_id, self.url, this.last_seen, this.last_seen), [this]
        try:
            leader = await asyncio.to_thread(self._lease.current)
            servers = await asyncio.to_thread(self._lease.servers, 60.0)
        except Unavailable:
            return None, []  # cut off from the database: nobody known to lead
        return leader, servers

    def leader_url(self) -> str | None:
        """Where the leader answers, as last seen (None if unknown)."""
        return self.leader.url if self.leader is not None else None

    async def run(self, lead: Lead) -> None:
        """Stand by and lead in turn, forever: `lead(epoch)` runs while this server
        holds the lease, and is cancelled the moment it may not."""
        if self._lease is None:
            self.epoch = 0
            await lead(0)
            return
        lease = self._lease
        while True:
            sent = self._clock()
            try:
                holding = await asyncio.to_thread(lease.acquire, self._holder, self.url)
            except Unavailable as exc:
                log.warning("cannot reach the lease: %s", exc)
                holding = None
            if holding is None:
                await self._stand_by(lease)
                continue
            self.epoch, self.deadline = holding.epoch, sent + TTL - MARGIN
            log.warning("leading, epoch %d", holding.epoch)
            with contextlib.suppress(Unavailable):
                await asyncio.to_thread(
                    lease.heartbeat, self.server_id, self.url, Role.LEADER, holding.epoch
                )
            try:
                await self._hold(lease, holding.epoch, lead)
            except asyncio.CancelledError:
                # Shutting down: let a standby lead at once rather than at the deadline.
                with contextlib.suppress(Unavailable):
                    await asyncio.to_thread(lease.release, self._holder, holding.epoch)
                raise
            except Exception:
                log.exception("epoch %d: leading failed; giving the lease up", holding.epoch)
                with contextlib.suppress(Unavailable):
                    await asyncio.to_thread(lease.release, self._holder, holding.epoch)
            finally:
                self.epoch = self.deadline = None
                self.ready = False
                log.warning("no longer leading (epoch %d): standing by", holding.epoch)

    async def _stand_by(self, lease: LeaseStore) -> None:
        try:
            self.leader = await asyncio.to_thread(lease.current)
            await asyncio.to_thread(lease.heartbeat, self.server_id, self.url, Role.STANDBY, None)
        except Unavailable as exc:
            log.warning("cannot reach the lease: %s", exc)
        await asyncio.sleep(TRY_EVERY)

    async def _hold(self, lease: LeaseStore, epoch: int, lead: Lead) -> None:
        """Lead until the lease is lost or can no longer be vouched for."""
        async with asyncio.TaskGroup() as tasks:
            leading = tasks.create_task(lead(epoch))
            await self._renew_until_lost(lease, epoch, leading)
            leading.cancel()

    async def _renew_until_lost(
        self, lease: LeaseStore, epoch: int, leading: asyncio.Task[None]
    ) -> None:
        while not leading.done():
            assert self.deadline is not None
            wait = min(RENEW_EVERY, self.deadline - self._clock())
            if wait <= 0:
                log.error("epoch %d: the lease could not be renewed in time", epoch)
                return
            done, _ = await asyncio.wait({leading}, timeout=wait)
            if done:
                return
            sent = self._clock()
            try:
                renewed = await asyncio.to_thread(lease.renew, self._holder, epoch)
                await asyncio.to_thread(
                    lease.heartbeat, self.server_id, self.url, Role.LEADER, epoch
                )
            except Unavailable as exc:
                log.warning("epoch %d: cannot renew the lease yet: %s", epoch, exc)
                continue
            if renewed is None:
                log.error("epoch %d: the lease was lost", epoch)
                return
            self.deadline = sent + TTL - MARGIN


class Gate:
    """ASGI middleware: on a standby, what would change something is refused with
    the leader's address (API writes, agents' events); reads pass."""

    def __init__(self, app: ASGIApp, leadership: Leadership) -> None:
        self.app = app
        self.leadership = leadership

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.leadership.ready or not _writes(scope):
            await self.app(scope, receive, send)
            return
        url = self.leadership.leader_url()
        where = f"the leader is at {url}" if url else "no server leads right now"
        await refuse(scope, send, 503, f"this server is a standby: {where}")


def _writes(scope: Scope) -> bool:
    path: str = scope["path"]
    changing = scope.get("method", "GET") not in ("GET", "HEAD", "OPTIONS")
    return changing and path.startswith(("/api/v1/", "/agent/"))
