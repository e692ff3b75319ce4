"""Leadership among servers sharing one PostgreSQL database: the lease, its epochs,
who is up, and how standbys follow the leader's writes.

Theory of operation
-------------------
One row of the `leadership` table is the lease: (epoch, holder, url, deadline,
since). Every statement below is one short transaction, and every time it reads
or writes is the database's `now()`, never a server's clock, so servers' clocks may
disagree freely.

- `acquire` takes the lease when it is free or expired, or already held by the
  same holder name (a restarted process under the same name), in one UPDATE: it
  bumps the epoch on every holding it grants, so each holding has an epoch greater
  than every earlier one. Two servers acquiring at once both UPDATE the one row;
  the second waits for the first's row lock, re-reads the row, finds it held and
  live, and gets nothing: exactly one wins.
- `renew` pushes the deadline forward only while (holder, epoch) still hold a live
  lease: once the deadline has passed, the holding is over even if nobody has
  taken it yet, and the holder must `acquire` again (with a new epoch).
- `release` ends a holding at once, so a standby need not wait out the deadline.
- Fencing: `PostgresStore(url, fence=...)` calls `apsis_fence(epoch)` first in
  every write transaction. It takes a share lock on the lease row and raises
  `Fenced` unless the epoch is current and its deadline not passed. The share
  lock makes a takeover wait for the writes already checked: a write either
  commits before the next holding begins, or is refused. A writer cut off in the
  middle of a transaction holds that lock until the database drops its session
  (`idle_in_transaction_session_timeout`, 5 s: see `connect`), which is why
  `acquire` gives up after `lock_timeout` and answers None (held).

Timings (the defaults below; the engine may choose others): the lease lasts `TTL`
= 6 s and the leader renews every `RENEW_EVERY` = 2 s, so two renewals can fail
before it lapses. A standby tries `acquire` every `TRY_EVERY` = 1 s, so when a
leader dies a standby leads at most TTL + TRY_EVERY = 7 s after the last renewal
(spec 06: within 10 s). The leader stops acting (no new starts, no transitions)
`MARGIN` = 1 s before the deadline as its own monotonic clock sees it: the
deadline it computes is the monotonic time taken *before* sending the renew plus
the TTL, which the database's deadline (its `now()` at the UPDATE plus the TTL) can
only exceed. Holder names must be unique per process (server id plus a random
part): a process that restarts under the same name gets a new epoch, which fences
its previous incarnation.

`servers` is where every server says who it is and what it does (`heartbeat`),
for `apsis status`. Standbys follow what the leader writes with `RunChanges`: every
store write NOTIFYs `CHANNEL` with the numbers of the runs it touched, delivered
when (and only if) it commits.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import psycopg
from psycopg import errors, sql

from apsis_common.errors import Unavailable

log = logging.getLogger(__name__)

TTL = 6.0
RENEW_EVERY = 2.0
TRY_EVERY = 1.0
MARGIN = 1.0

# What every store write NOTIFYs: the numbers of the runs it touched, space-separated.
CHANNEL = "apsis_runs"

# The SQLSTATE `apsis_fence` raises (class "AP", ours).
FENCED_SQLSTATE = "AP001"


class Fenced(Unavailable):
    """A write by a server whose leadership epoch is no longer current (or whose
    lease has expired): nothing was written, and this server must stop leading."""


class Role(StrEnum):
    LEADER = "leader"
    STANDBY = "standby"


@dataclass(frozen=True)
class Lease:
    """A holding of the lease: its epoch and deadline (by the database's clock)."""

    epoch: int
    deadline: datetime


@dataclass(frozen=True)
class Leader:
    """Who holds the lease now."""

    epoch: int
    holder: str
    url: str
    since: datetime
    deadline: datetime


@dataclass(frozen=True)
class Server:
    """A server as it last reported itself."""

    server_id: str
    url: str
    role: Role
    epoch: int | None
    last_seen: datetime


# How every connection of the server notices a dead network: unacknowledged data
# (a write into a cut network) fails after 5 s; an idle connection is probed after
# 5 s, then every second, 3 times.
KEEPALIVE: dict[str, Any] = {
    "tcp_user_timeout": 5000,
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 1,
    "keepalives_count": 3,
}


# The same on the database's side of each connection (seconds, and ms), and a
# session cut off inside a transaction gives back its locks (the lease row's share
# lock above all) after 5 s.
SESSION: dict[str, int] = {
    "tcp_keepalives_idle": 5,
    "tcp_keepalives_interval": 1,
    "tcp_keepalives_count": 3,
    "tcp_user_timeout": 5000,
    "idle_in_transaction_session_timeout": 5000,
}


def connect(url: str, settings: dict[str, float]) -> psycopg.Connection:
    """An autocommit connection with `SESSION` and these settings (each in its own
    unit), that notices a dead network within seconds, on both sides."""
    options = " ".join(f"-c {name}={int(value)}" for name, value in {**SESSION, **settings}.items())
    try:
        return psycopg.connect(
            url,
            autocommit=True,
            connect_timeout=10,
            application_name="apsis-server",
            options=options,
            **KEEPALIVE,
        )
    except psycopg.OperationalError as exc:
        raise Unavailable(f"cannot reach the database: {exc}") from exc


class PostgresLease:
    """The lease and the servers table, on a connection of their own (thread-safe:
    psycopg serializes calls on a connection). The schema must exist: opening a
    `PostgresStore` on the same database migrates it."""

    def __init__(self, url: str, *, lock_timeout: float = 2.0) -> None:
        self._url = url
        self._lock_timeout = lock_timeout
        self._db = self._connect()

    def _connect(self) -> psycopg.Connection:
        return connect(
            self._url, {"lock_timeout": self._lock_timeout * 1000, "statement_timeout": 5000}
        )

    @contextmanager
    def _cursor(self) -> Iterator[psycopg.Cursor]:
        """A cursor; Unavailable if the database cannot be reached (reconnects next time)."""
        if self._db.closed:
            self._db = self._connect()
        try:
            with self._db.cursor() as cur:
                yield cur
        except errors.LockNotAvailable:
            raise
        except psycopg.OperationalError as exc:
            raise Unavailable(f"lease: {exc}") from exc

    def acquire(self, holder: str, url: str, ttl: float = TTL) -> Lease | None:
        """Take the lease if it is free, expired or already `holder`'s, with a new
        epoch; None if someone else holds it."""
        try:
            with self._cursor() as cur:
                row = cur.execute(
                    "UPDATE leadership SET epoch = epoch + 1, holder = %(holder)s,"
                    " url = %(url)s, since = now(),"
                    " deadline = now() + make_interval(secs => %(ttl)s)"
                    " WHERE deadline <= now() OR holder = %(holder)s"
                    " RETURNING epoch, deadline",
                    {"holder": holder, "url": url, "ttl": ttl},
                ).fetchone()
        except errors.LockNotAvailable:
            return None  # a writer of the current holder has the row: held
        return Lease(int(row[0]), row[1]) if row else None

    def renew(self, holder: str, epoch: int, ttl: float = TTL) -> datetime | None:
        """The new deadline, or None if this holding is over (expired or taken).
        Unavailable if the database cannot tell now."""
        try:
            with self._cursor() as cur:
                row = cur.execute(
                    "UPDATE leadership SET deadline = now() + make_interval(secs => %s)"
                    " WHERE holder = %s AND epoch = %s AND deadline > now()"
                    " RETURNING deadline",
                    (ttl, holder, epoch),
                ).fetchone()
        except errors.LockNotAvailable as exc:
            raise Unavailable(f"lease: {exc}") from exc
        return row[0] if row else None

    def release(self, holder: str, epoch: int) -> None:
        """End this holding now (nothing if it is already over)."""
        with self._cursor() as cur:
            cur.execute(
                "UPDATE leadership SET deadline = '-infinity'"
                " WHERE holder = %s AND epoch = %s AND deadline > now()",
                (holder, epoch),
            )

    def current(self) -> Leader | None:
        """Who leads now; None if nobody holds a live lease."""
        with self._cursor() as cur:
            row = cur.execute(
                "SELECT epoch, holder, url, since, deadline FROM leadership WHERE deadline > now()"
            ).fetchone()
        return Leader(int(row[0]), row[1], row[2], row[3], row[4]) if row else None

    def heartbeat(self, server_id: str, url: str, role: Role, epoch: int | None) -> None:
        """Record that this server is up, where, and in which role."""
        with self._cursor() as cur:
            cur.execute(
                "INSERT INTO servers VALUES (%s, %s, %s, %s, now())"
                " ON CONFLICT (server_id) DO UPDATE SET url = excluded.url,"
                " role = excluded.role, epoch = excluded.epoch, last_seen = now()",
                (server_id, url, role.value, epoch),
            )

    def servers(self, seen_within: float | None = None) -> list[Server]:
        """Every server that reported itself (within the last `seen_within` seconds)."""
        within = (
            "" if seen_within is None else " WHERE last_seen > now() - make_interval(secs => %s)"
        )
        with self._cursor() as cur:
            rows = cur.execute(
                "SELECT server_id, url, role, epoch, last_seen FROM servers"
                f"{within} ORDER BY server_id",
                () if seen_within is None else (seen_within,),
            ).fetchall()
        return [Server(s, u, Role(r), e, t) for s, u, r, e, t in rows]

    def close(self) -> None:
        self._db.close()


class RunChanges:
    """The runs each committed write changed, as the store NOTIFYs them: how a
    standby follows the database without talking to the leader.

    `async with RunChanges(url) as changes: async for run_ids in changes: ...`.
    Notifications sent while no connection listens are lost: when the iteration
    raises `Unavailable` (the connection dropped), listen again, then reload what
    you show from the store."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._db: psycopg.AsyncConnection | None = None

    async def __aenter__(self) -> RunChanges:
        try:
            self._db = await psycopg.AsyncConnection.connect(
                self._url,
                autocommit=True,
                connect_timeout=10,
                application_name="apsis-server",
                **KEEPALIVE,
            )
            await self._db.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))
        except psycopg.OperationalError as exc:
            raise Unavailable(f"run changes: {exc}") from exc
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._db is not None:
            await self._db.close()

    async def __aiter__(self) -> AsyncIterator[list[str]]:
        """Run ids, one list per notification, in commit order."""
        if self._db is None:
            raise RuntimeError("RunChanges is used as `async with`")
        try:
            async for notify in self._db.notifies():
                yield [f"r{n}" for n in notify.payload.split()]
        except psycopg.OperationalError as exc:
            raise Unavailable(f"run changes: {exc}") from exc
