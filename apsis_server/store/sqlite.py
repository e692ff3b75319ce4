"""The embedded run store: SQLite in WAL mode, with a versioned schema.

Summary columns live in `runs`; the run log, metadata and output (zlib chunks
keyed by byte offset) each have their own table. Only unfinished runs are ever
loaded whole; history is read by indexed, keyset-paginated queries.
"""

from __future__ import annotations

import heapq
import json
import logging
import sqlite3
import zlib
from pathlib import Path
from typing import Any

import msgspec

from apsis_common.errors import Unavailable
from apsis_common.states import FINISHED, State
from apsis_server.core.bound import from_plain, to_plain
from apsis_server.core.runs import Identity, LogEntry, Run, args_key, run_number
from apsis_server.store.archive import Archiver
from apsis_server.store.base import (
    STDERR,
    STDOUT,
    Changes,
    OutputName,
    RunFilter,
    stitch,
)
from apsis_server.store.checkpoint import Checkpointer
from apsis_server.store.query import run_time

log = logging.getLogger(__name__)

_FINISHED_SQL = ", ".join(f"'{s.value}'" for s in sorted(FINISHED))

# Each entry moves the schema from version i to i + 1. Never edit a landed entry.
MIGRATIONS: list[str] = [
    f"""
    CREATE TABLE runs (
        run_number INTEGER PRIMARY KEY,
        job_id TEXT NOT NULL,
        args TEXT NOT NULL,
        state TEXT NOT NULL,
        time REAL NOT NULL,
        schedule_key TEXT,
        labels TEXT NOT NULL,
        summary TEXT NOT NULL
    );
    CREATE INDEX runs_job ON runs (job_id, run_number);
    CREATE INDEX runs_time ON runs (time);
    CREATE INDEX runs_unfinished ON runs (state) WHERE state NOT IN ({_FINISHED_SQL});
    CREATE UNIQUE INDEX runs_identity ON runs (job_id, schedule_key, time)
        WHERE schedule_key IS NOT NULL;
    CREATE TABLE run_log (
        run_number INTEGER NOT NULL,
        time REAL NOT NULL,
        state TEXT,
        message TEXT NOT NULL
    );
    CREATE INDEX run_log_run ON run_log (run_number);
    CREATE TABLE run_meta (run_number INTEGER PRIMARY KEY, meta TEXT NOT NULL);
    CREATE TABLE run_output (
        run_number INTEGER NOT NULL,
        offset INTEGER NOT NULL,
        length INTEGER NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY (run_number, offset)
    );
    CREATE TABLE agent_acks (agent_id TEXT PRIMARY KEY, acked_seq INTEGER NOT NULL);
    CREATE TABLE schedule_cursors (
        job_id TEXT NOT NULL,
        schedule_key TEXT NOT NULL,
        time REAL NOT NULL,
        PRIMARY KEY (job_id, schedule_key)
    );
    """,
]
MIGRATIONS.append(
    # Output that does not compress (already compressed, random) is stored as is.
    "ALTER TABLE run_output ADD COLUMN codec TEXT NOT NULL DEFAULT 'zlib'"
)
MIGRATIONS.append(
    # The event sequence each agent reports in (agents/facts.py): a new one restarts.
    "CREATE TABLE agent_sequences (agent_id TEXT PRIMARY KEY, instance TEXT NOT NULL)"
)
MIGRATIONS.append(
    # Which server wrote a log entry, with servers sharing a database (same schema
    # as PostgreSQL's, so a database moves between the two).
    "ALTER TABLE run_log ADD COLUMN server TEXT"
)
MIGRATIONS.append(
    # stdout and stderr kept apart: `run_output` is stdout (both, for a run that
    # merges them, and every earlier run), `run_stderr` a separate stderr; `merged`
    # places a chunk in the merged view (NULL: at its offset).
    """
    ALTER TABLE run_output ADD COLUMN merged INTEGER;
    CREATE TABLE run_stderr (
        run_number INTEGER NOT NULL,
        offset INTEGER NOT NULL,
        length INTEGER NOT NULL,
        data BLOB NOT NULL,
        codec TEXT NOT NULL,
        merged INTEGER NOT NULL,
        PRIMARY KEY (run_number, offset)
    )
    """
)
SCHEMA_VERSION = len(MIGRATIONS)
# The table of each stream.
_STREAM_TABLES = {STDOUT: "run_output", STDERR: "run_stderr"}


def _encode(data: bytes) -> tuple[bytes, str]:
    """Output bytes as stored, and their codec: zlib unless a sample will not shrink."""
    sample = data[:4096]
    if len(sample) >= 256 and len(zlib.compress(sample, 1)) > 0.9 * len(sample):
        return data, "raw"
    return zlib.compress(data, 1), "zlib"


def _decode(data: bytes, codec: str) -> bytes:
    return zlib.decompress(data) if codec == "zlib" else data


def _position(piece: tuple[int, bytes]) -> int:
    return piece[0]


def _output_queries(name: OutputName, what: str, where: str) -> list[str]:
    """One query per table holding output `name`; `{pos}` in `what` and `where` is a
    chunk's position in it."""
    if name is OutputName.MERGED:
        tables, pos = list(_STREAM_TABLES.values()), "COALESCE(merged, offset)"
    else:
        tables, pos = [_STREAM_TABLES[STDOUT if name is OutputName.STDOUT else STDERR]], "offset"
    return [f"SELECT {what} FROM {t} WHERE run_number = ? {where}".format(pos=pos) for t in tables]


# The JSON the store writes on every change of a run (its summary, labels, metadata):
# msgspec's encoder, ~7x faster than json.dumps here. Non-ASCII text is written as
# UTF-8 rather than escaped; either reads back the same. (`args_key` stays on
# json.dumps: its text is a run's identity, compared with stored keys.)
_JSON = msgspec.json.Encoder()


def dumps(value: Any) -> str:
    """`value` as compact JSON text. Text with lone surrogates (which UTF-8 cannot
    carry; a job's args may hold them) is escaped by json.dumps, as before."""
    try:
        return _JSON.encode(value).decode()
    except UnicodeEncodeError:
        return json.dumps(value, separators=(",", ":"))


def _summary(run: Run) -> str:
    return dumps(
        {
            "schedule_time": run.schedule_time,
            "times": dict(run.times),
            "message": run.message,
            "ad_hoc": run.ad_hoc,
            "rerun_of": run.rerun_of,
            "stop_time": run.stop_time,
            "program": to_plain(run.program) if run.program is not None else None,
            "proc_id": run.proc_id,
            "agent_id": run.agent_id,
            "attempt": run.attempt,
            "retry": run.retry,
        }
    )


def _run(row: tuple[Any, ...]) -> Run:
    number, job_id, args, state, _time, schedule_key, labels, summary = row
    s = json.loads(summary)
    return Run(
        run_id=f"r{number}",
        job_id=job_id,
        args=json.loads(args),
        state=State(state),
        schedule_time=s["schedule_time"],
        times=s["times"],
        message=s["message"],
        ad_hoc=s["ad_hoc"],
        rerun_of=s["rerun_of"],
        labels=tuple(json.loads(labels)),
        schedule_key=schedule_key,
        stop_time=s["stop_time"],
        program=from_plain(s["program"]) if s["program"] is not None else None,
        proc_id=s["proc_id"],
        agent_id=s["agent_id"],
        attempt=s["attempt"],
        retry=s.get("retry", 0),
    )


class SqliteStore:
    """Runs and their history in one SQLite file."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        # Only takes effect on a new file: lets internal.vacuum give space back in steps.
        self._db.execute("PRAGMA auto_vacuum = INCREMENTAL")
        self._db.execute("PRAGMA journal_mode = WAL")
        # A crash of the process loses nothing committed; only a power loss could
        # drop the last transactions (WAL keeps the file consistent either way).
        self._db.execute("PRAGMA synchronous = NORMAL")
        self._db.execute("PRAGMA foreign_keys = ON")
        # Checkpoints run in a thread (store/checkpoint.py), never inside a commit.
        self._db.execute("PRAGMA wal_autocheckpoint = 0")
        self._db.execute(f"PRAGMA journal_size_limit = {64 << 20}")
        self.migrate()
        self._checkpointer = Checkpointer(path)

    def schema_version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def migrate(self) -> None:
        """Bring the schema forward to `SCHEMA_VERSION`, one transaction per step."""
        version = self.schema_version()
        if version > SCHEMA_VERSION:
            raise RuntimeError(
                f"database schema {version} is newer than this server's {SCHEMA_VERSION}"
            )
        for i in range(version, SCHEMA_VERSION):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for statement in MIGRATIONS[i].split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version = {i + 1}")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def max_run_number(self) -> int:
        row = self._db.execute("SELECT MAX(run_number) FROM runs").fetchone()
        return int(row[0] or 0)

    def write(self, changes: Changes) -> None:
        """Write `changes` in one transaction; Unavailable (nothing written) if not."""
        try:
            self._write(changes)
        except sqlite3.OperationalError as exc:  # a full disk, a locked or read-only file
            raise Unavailable(f"cannot write the store: {exc}") from exc
        except sqlite3.Error as exc:
            # A constraint broken is a bug; the engine keeps the changes all the same
            # (memory ahead of the store, never apart from it) and says so loudly.
            log.exception("store write refused")
            raise Unavailable(f"cannot write the store: {exc}") from exc

    def _write(self, changes: Changes) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            # Withdrawn runs go first: a run planned again in the same changes (a
            # reload) takes the identity (job, schedule, time) they leave free.
            deleted = [(run_number(r),) for r in changes.deleted]
            db.executemany("DELETE FROM runs WHERE run_number = ?", deleted)
            db.executemany("DELETE FROM run_log WHERE run_number = ?", deleted)
            db.executemany(
                "INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (run_number) DO UPDATE SET state = excluded.state,"
                " summary = excluded.summary, time = excluded.time",
                [
                    (
                        run_number(r.run_id),
                        r.job_id,
                        args_key(r.args),
                        r.state.value,
                        run_time(r),
                        r.schedule_key,
                        dumps(list(r.labels)),
                        _summary(r),
                    )
                    for r in changes.runs.values()
                ],
            )
            db.executemany(
                "INSERT INTO run_log VALUES (?, ?, ?, ?, ?)",
                [
                    (
                        run_number(e.run_id),
                        e.time,
                        e.state.value if e.state else None,
                        e.message,
                        e.server,
                    )
                    for e in changes.log
                ],
            )
            for run_id, meta in changes.meta.items():
                number = run_number(run_id)
                row = db.execute("SELECT meta FROM run_meta WHERE run_number = ?", (number,))
                old = row.fetchone()
                merged = {**(json.loads(old[0]) if old else {}), **meta}
                db.execute("INSERT OR REPLACE INTO run_meta VALUES (?, ?)", (number, dumps(merged)))
            for stream, table in _STREAM_TABLES.items():
                db.executemany(
                    f"INSERT OR IGNORE INTO {table}"
                    " (run_number, offset, length, data, codec, merged) VALUES (?, ?, ?, ?, ?, ?)",
                    [
                        (run_number(c.run_id), c.offset, len(c.data), *_encode(c.data), c.merged)
                        for c in changes.output
                        if c.stream == stream
                    ],
                )
            db.executemany(
                "INSERT OR REPLACE INTO agent_acks VALUES (?, ?)", list(changes.acks.items())
            )
            db.executemany(
                "INSERT OR REPLACE INTO agent_sequences VALUES (?, ?)",
                list(changes.instances.items()),
            )
            db.executemany(
                "INSERT OR REPLACE INTO schedule_cursors VALUES (?, ?, ?)",
                [(j, k, t) for (j, k), t in changes.cursors.items()],
            )
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def unfinished(self) -> list[Run]:
        rows = self._db.execute(f"SELECT * FROM runs WHERE state NOT IN ({_FINISHED_SQL})")
        return [_run(row) for row in rows]

    def get(self, run_id: str) -> Run | None:
        try:
            number = run_number(run_id)
        except ValueError:
            return None
        row = self._db.execute("SELECT * FROM runs WHERE run_number = ?", (number,)).fetchone()
        return _run(row) if row else None

    def query(self, run_filter: RunFilter) -> list[Run]:
        f = run_filter
        where: list[str] = ["1"]
        params: list[Any] = []
        if f.job_id is not None:
            where.append("job_id = ?")
            params.append(f.job_id)
        if f.job_text is not None:
            where.append("instr(lower(job_id), lower(?)) > 0")
            params.append(f.job_text)
        if f.job_prefix is not None:
            where.append("substr(job_id, 1, length(?)) = ?")
            params.extend([f.job_prefix, f.job_prefix])
        if f.states:
            where.append(f"state IN ({', '.join('?' for _ in f.states)})")
            params.extend(s.value for s in f.states)
        if f.label is not None:
            where.append("EXISTS (SELECT 1 FROM json_each(runs.labels) WHERE value = ?)")
            params.append(f.label)
        for name, value in f.args.items():
            where.append("json_extract(args, ?) = ?")
            params.extend([f'$."{name}"', value])
        if f.since is not None:
            where.append("time >= ?")
            params.append(f.since)
        if f.until is not None:
            where.append("time < ?")
            params.append(f.until)
        if f.before is not None:
            where.append("run_number < ?")
            params.append(run_number(f.before))
        sql = f"SELECT * FROM runs WHERE {' AND '.join(where)} ORDER BY run_number DESC LIMIT ?"
        return [_run(row) for row in self._db.execute(sql, [*params, f.limit])]

    def log(self, run_id: str) -> list[LogEntry]:
        rows = self._db.execute(
            "SELECT time, state, message, server FROM run_log WHERE run_number = ? ORDER BY rowid",
            (run_number(run_id),),
        )
        return [LogEntry(run_id, t, m, State(s) if s else None, w) for t, s, m, w in rows]

    def meta(self, run_id: str) -> dict[str, Any]:
        row = self._db.execute(
            "SELECT meta FROM run_meta WHERE run_number = ?", (run_number(run_id),)
        ).fetchone()
        return dict(json.loads(row[0])) if row else {}

    def output_length(self, run_id: str, name: OutputName = OutputName.MERGED) -> int:
        number = run_number(run_id)
        return max(
            int(self._db.execute(q, (number,)).fetchone()[0] or 0)
            for q in _output_queries(name, "MAX({pos} + length)", "")
        )

    def output(
        self,
        run_id: str,
        start: int = 0,
        stop: int | None = None,
        name: OutputName = OutputName.MERGED,
    ) -> bytes:
        end = self.output_length(run_id, name) if stop is None else stop
        # A chunk's place in the merged view is never before its offset in its
        # stream (`offset < end` is a range of the key), and each table read in key
        # order is in merged order too: the two are merged, not sorted.
        where = "AND offset < ? AND {pos} < ? AND {pos} + length > ? ORDER BY offset"
        params = (run_number(run_id), end, end, start)
        tables = [
            ((pos, _decode(data, codec)) for pos, data, codec in self._db.execute(q, params))
            for q in _output_queries(name, "{pos}, data, codec", where)
        ]
        return stitch(heapq.merge(*tables, key=_position), start, end)

    def ack(self, agent_id: str) -> int:
        row = self._db.execute(
            "SELECT acked_seq FROM agent_acks WHERE agent_id = ?", (agent_id,)
        ).fetchone()
        return int(row[0]) if row else 0

    def instance(self, agent_id: str) -> str:
        row = self._db.execute(
            "SELECT instance FROM agent_sequences WHERE agent_id = ?", (agent_id,)
        ).fetchone()
        return str(row[0]) if row else ""

    def cursors(self) -> dict[tuple[str, str], float]:
        rows = self._db.execute("SELECT job_id, schedule_key, time FROM schedule_cursors")
        return {(j, k): t for j, k, t in rows}

    def scheduled_identities(self, job_id: str, since: float) -> dict[str, Identity]:
        rows = self._db.execute(
            "SELECT run_number, time, args FROM runs WHERE job_id = ?"
            " AND schedule_key IS NOT NULL AND time >= ?",
            (job_id, since),
        )
        return {f"r{n}": (t, args) for n, t, args in rows}

    def archiver(self, path: Path) -> Archiver:
        """Moves finished runs from this store into the archive file at `path`."""
        return Archiver(self._db, path)

    def vacuum_step(self, pages: int) -> int:
        """Give back up to `pages` free pages to the file system; how many are left."""
        self._db.execute(f"PRAGMA incremental_vacuum({int(pages)})")
        return int(self._db.execute("PRAGMA freelist_count").fetchone()[0])

    def counts(self) -> dict[str, int]:
        """Runs by state."""
        return {
            s: int(n)
            for s, n in self._db.execute("SELECT state, COUNT(*) FROM runs GROUP BY state")
        }

    def size(self) -> int:
        """Bytes used by the database file."""
        page_count = self._db.execute("PRAGMA page_count").fetchone()[0]
        page_size = self._db.execute("PRAGMA page_size").fetchone()[0]
        return int(page_count) * int(page_size)

    def close(self) -> None:
        self._checkpointer.close()
        self._db.close()
