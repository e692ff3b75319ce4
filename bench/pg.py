"""The PostgreSQL store under measurement: a cluster of the bench's own (initdb in a
temp dir, fsync on as in production; tests/postgres.py), a fresh database for each
server. `python -m bench --store postgres P1 P3 P5` measures those scenarios on it;
F1 (failover) always runs on it."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from apsis_server.store.postgres import PostgresStore
from bench import live
from tests.postgres import Cluster, cluster


@contextlib.contextmanager
def store() -> Iterator[Cluster]:
    """Every `live_server` within gets a database of its own in one cluster."""
    with cluster(durable=True) as running:
        live.postgres = running
        try:
            yield running
        finally:
            live.postgres = None


@contextlib.contextmanager
def databases() -> Iterator[Cluster]:
    """The running cluster, else one started for the block."""
    if live.postgres is not None:
        yield live.postgres
        return
    with cluster(durable=True) as running:
        yield running


_TABLES = {  # table: (SQLite's columns, PostgreSQL's)
    "runs": (
        "run_number, job_id, args, state, time, schedule_key, labels, summary",
        "run_number, job_id, args, state, time, schedule_key, labels, summary",
    ),
    "run_log": ("run_number, time, state, message, server",) * 2,
    "run_meta": ("run_number, meta",) * 2,
    "run_output": (
        "run_number, offset, length, codec, data",
        "run_number, pos, length, codec, data",
    ),
}


def load_history(sqlite_file: Path, url: str) -> int:
    """Copy a generated SQLite history (bench/history.py: runs, their log, metadata
    and output) into the PostgreSQL store at `url`, made with the store's own
    schema; runs copied."""
    PostgresStore(url).close()
    source = sqlite3.connect(sqlite_file)
    import psycopg

    copied = 0
    with psycopg.connect(url) as db, db.cursor() as cur:
        for table, (theirs, ours) in _TABLES.items():
            with cur.copy(f"COPY {table} ({ours}) FROM STDIN") as copy:
                for row in source.execute(f"SELECT {theirs} FROM {table}"):
                    if table == "runs":
                        row = (*row[:6], json.loads(row[6]), row[7])
                        copied += 1
                    copy.write_row(row)
            cur.execute(f"ANALYZE {table}")
    source.close()
    return copied


def database_mb(url: str) -> float:
    """The size of the database at `url` in MB, as PostgreSQL counts it."""
    import psycopg

    with psycopg.connect(url) as db:
        row = db.execute("SELECT pg_database_size(current_database())").fetchone()
    assert row is not None
    return float(row[0]) / 1e6
