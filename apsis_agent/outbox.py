"""The outbox: sequence numbers, persistence and acknowledgement of events.

Events get contiguous sequence numbers from 1, per agent, never reused: the next
number is stored with the events in one SQLite transaction. Events stay on disk
until the server acknowledges them (`seq <= acked_seq` are deleted).

Output events are stored without their bytes (file, offset, length): the output
file is the durable buffer and the bytes are read when a batch is built, so the
outbox stays small however much a program writes. Before a process directory is
removed, the bytes of its unacknowledged output are copied in.

The ledger records, per process, what has been turned into events (started, the
final event, the output offset of each stream), in the same transaction as the
events themselves, so after a crash the agent neither repeats nor skips a report.

Writes are buffered and flushed once per event-loop turn (`flush`), so a burst of
starts or exits costs one transaction.
"""

from __future__ import annotations

import collections
import os
import secrets
import sqlite3
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from apsis_common import codec
from apsis_common.protocol import Event, ProcOutput

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    proc_id TEXT,
    body BLOB NOT NULL,
    path TEXT,
    length INTEGER NOT NULL DEFAULT 0,
    data BLOB
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS ledger (
    proc_id TEXT PRIMARY KEY,
    started INTEGER NOT NULL,
    final INTEGER NOT NULL,
    enqueued INTEGER NOT NULL,
    enqueued_err INTEGER NOT NULL DEFAULT 0
);
"""
# The ledger's column of each output stream, by fd.
_ENQUEUED = {1: "enqueued", 2: "enqueued_err"}


@dataclass(frozen=True)
class Ledger:
    """What has been reported about one process."""

    started: bool = False
    final: bool = False
    enqueued: int = 0  # stdout's (with stderr, when merged)
    enqueued_err: int = 0  # a separate stderr's

    def offsets(self) -> dict[int, int]:
        """What has been enqueued of each stream, by fd."""
        return {fd: getattr(self, column) for fd, column in _ENQUEUED.items()}


@dataclass(frozen=True)
class _Pending:
    seq: int
    proc_id: str | None
    body: bytes
    path: str | None
    length: int


class Outbox:
    """The persistent, acknowledged queue of events of one agent."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(ledger)")}
        if "enqueued_err" not in columns:  # an outbox from before stderr could be separate
            self._db.execute(
                "ALTER TABLE ledger ADD COLUMN enqueued_err INTEGER NOT NULL DEFAULT 0"
            )
        meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        if "instance" not in meta:
            # Names this sequence: made with the outbox, so a new outbox (a wiped
            # state dir) is a new sequence the server can tell from this one.
            meta["instance"] = secrets.randbits(62)
            self._db.execute("INSERT INTO meta VALUES ('instance', ?)", (meta["instance"],))
        self.instance = f"{meta['instance']:016x}"
        self.acked_seq: int = meta.get("acked_seq", 0)
        # The last sequence number given out (persisted or buffered).
        self.last_seq: int = meta.get("next_seq", 1) - 1
        # The last sequence number on disk: only those are sent.
        self.stored_seq = self.last_seq
        self._pending: list[_Pending] = []
        self._ledger_changes: dict[str, Ledger] = {}
        self._ledger: dict[str, Ledger] = {
            row[0]: Ledger(bool(row[1]), bool(row[2]), row[3], row[4])
            for row in self._db.execute(
                "SELECT proc_id, started, final, enqueued, enqueued_err FROM ledger"
            )
        }
        # Unacknowledged output, for flow control: (seq, proc id, bytes) in order.
        self._unacked: collections.deque[tuple[int, str, int]] = collections.deque()
        self.unacked_bytes: dict[str, int] = {}
        self.unacked_total = 0
        for seq, proc_id, length in self._db.execute(
            "SELECT seq, proc_id, length FROM events WHERE length > 0 ORDER BY seq"
        ):
            self._track(seq, proc_id, length)
        # Processes whose final event is reported: the seq to be acked before the
        # process directory can go (the server then holds everything about it).
        self._final_seq: dict[str, int] = {}
        self._done: list[str] = []
        last_events = dict(
            self._db.execute("SELECT proc_id, MAX(seq) FROM events GROUP BY proc_id").fetchall()
        )
        for proc_id, entry in self._ledger.items():
            if entry.final:
                if proc_id in last_events:
                    self._final_seq[proc_id] = last_events[proc_id]
                else:
                    self._done.append(proc_id)

    def close(self) -> None:
        """Close the database (call `flush` first: buffered events are dropped)."""
        self._db.close()

    @property
    def pending(self) -> int:
        """Events given a number and not yet acknowledged."""
        return self.last_seq - self.acked_seq

    # -- adding ----------------------------------------------------------------------

    def ledger(self, proc_id: str) -> Ledger:
        return self._ledger.get(proc_id, Ledger())

    def add(self, event: Event, **ledger: Any) -> int:
        """Give `event` the next sequence number; `ledger` updates the process's record.

        Buffered until `flush`; the caller's event loop flushes each turn.
        """
        if isinstance(event, ProcOutput):
            raise TypeError("output events are added with add_output")
        proc_id = getattr(event, "proc_id", None)
        self.last_seq += 1
        body = codec.encode(event)
        self._pending.append(_Pending(self.last_seq, proc_id, body, None, 0))
        if proc_id is not None and ledger:
            self._change(proc_id, **ledger)
            if ledger.get("final"):
                self._final_seq[proc_id] = self.last_seq
        return self.last_seq

    def take_done(self) -> list[str]:
        """Processes whose final event the server has acknowledged, once each."""
        done, self._done = self._done, []
        return done

    def add_output(self, proc_id: str, fd: int, path: Path, offset: int, length: int) -> int:
        """An output event of stream `fd` for `length` bytes of `path` from `offset`,
        read when sent."""
        self.last_seq += 1
        body = codec.encode(ProcOutput(proc_id, fd, offset, b""))
        self._pending.append(_Pending(self.last_seq, proc_id, body, str(path), length))
        self._track(self.last_seq, proc_id, length)
        self._change(proc_id, **{_ENQUEUED[fd]: offset + length})
        return self.last_seq

    def _change(self, proc_id: str, **fields: Any) -> None:
        entry = replace(self.ledger(proc_id), **fields)
        self._ledger[proc_id] = entry
        self._ledger_changes[proc_id] = entry

    def _track(self, seq: int, proc_id: str, length: int) -> None:
        self._unacked.append((seq, proc_id, length))
        self.unacked_bytes[proc_id] = self.unacked_bytes.get(proc_id, 0) + length
        self.unacked_total += length

    def flush(self) -> bool:
        """Write buffered events and ledger changes in one transaction; True if any."""
        if not self._pending and not self._ledger_changes:
            return False
        with self._transaction():
            self._db.executemany(
                "INSERT INTO events (seq, proc_id, body, path, length) VALUES (?, ?, ?, ?, ?)",
                [(p.seq, p.proc_id, p.body, p.path, p.length) for p in self._pending],
            )
            self._db.executemany(
                "INSERT OR REPLACE INTO ledger (proc_id, started, final, enqueued, enqueued_err)"
                " VALUES (?, ?, ?, ?, ?)",
                [
                    (k, v.started, v.final, v.enqueued, v.enqueued_err)
                    for k, v in self._ledger_changes.items()
                ],
            )
            self._set_meta("next_seq", self.last_seq + 1)
        self._pending.clear()
        self._ledger_changes.clear()
        self.stored_seq = self.last_seq
        return True

    def _transaction(self) -> Any:
        return _Transaction(self._db)

    def _set_meta(self, key: str, value: int) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    # -- sending ---------------------------------------------------------------------

    def batch(self, max_events: int, max_bytes: int) -> tuple[list[dict[str, Any]], int]:
        """Plain envelopes (`Envelope`s as dicts) of the oldest stored, unacked events.

        Output bytes are read from the files now. Returns the envelopes and the
        last sequence number in them (acked_seq when empty).
        """
        rows = self._db.execute(
            "SELECT seq, body, path, length, data FROM events WHERE seq > ? AND seq <= ?"
            " ORDER BY seq LIMIT ?",
            (self.acked_seq, self.stored_seq, max_events),
        ).fetchall()
        envelopes: list[dict[str, Any]] = []
        size = 0
        last = self.acked_seq
        for seq, body, path, length, data in rows:
            if envelopes and size + length > max_bytes:
                break
            event = codec.decode_plain(body)
            if path is not None:
                event["data"] = data if data is not None else _read_range(path, event, length)
                size += length
            envelopes.append({"seq": seq, "event": event})
            last = seq
        return envelopes, last

    def ack(self, acked_seq: int) -> bool:
        """Forget events up to `acked_seq`; False if it acknowledges nothing new."""
        acked_seq = min(acked_seq, self.stored_seq)
        if acked_seq <= self.acked_seq:
            return False
        with self._transaction():
            self._db.execute("DELETE FROM events WHERE seq <= ?", (acked_seq,))
            self._set_meta("acked_seq", acked_seq)
        self.acked_seq = acked_seq
        done = [proc_id for proc_id, seq in self._final_seq.items() if seq <= acked_seq]
        for proc_id in done:
            del self._final_seq[proc_id]
        self._done.extend(done)
        while self._unacked and self._unacked[0][0] <= acked_seq:
            _, proc_id, length = self._unacked.popleft()
            left = self.unacked_bytes[proc_id] - length
            if left:
                self.unacked_bytes[proc_id] = left
            else:
                del self.unacked_bytes[proc_id]
            self.unacked_total -= length
        return True

    def forget_reported(self, proc_ids: list[str]) -> None:
        """Drop the ledger of processes whose every event is acknowledged."""
        with self._transaction():
            self._db.executemany("DELETE FROM ledger WHERE proc_id = ?", [(p,) for p in proc_ids])
        for proc_id in proc_ids:
            self._ledger.pop(proc_id, None)
            self._final_seq.pop(proc_id, None)

    def forget(self, proc_id: str) -> None:
        """Before a process directory goes: copy in its unsent output, drop its ledger."""
        self.flush()
        with self._transaction():
            rows = self._db.execute(
                "SELECT seq, body, path, length FROM events"
                " WHERE proc_id = ? AND path IS NOT NULL AND data IS NULL",
                (proc_id,),
            ).fetchall()
            for seq, body, path, length in rows:
                data = _read_range(path, codec.decode_plain(body), length)
                self._db.execute("UPDATE events SET data = ? WHERE seq = ?", (data, seq))
            self._db.execute("DELETE FROM ledger WHERE proc_id = ?", (proc_id,))
        self._ledger.pop(proc_id, None)


def _read_range(path: str, event: dict[str, Any], length: int) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return b""
    try:
        return os.pread(fd, length, int(event["offset"]))
    finally:
        os.close(fd)


class _Transaction:
    """BEGIN … COMMIT, or ROLLBACK on error (the connection is in autocommit mode)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN")

    def __exit__(self, kind: object, *_: object) -> None:
        self._db.execute("ROLLBACK" if kind is not None else "COMMIT")
