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


def load_history(sqlite_file: Path, url: str) -> int:
    """Copy the `runs` of a generated SQLite history (bench/history.py) into the
    PostgreSQL store at `url`, made with the store's own schema; rows copied."""
    PostgresStore(url).close()
    source = sqlite3.connect(sqlite_file)
    copied = 0
    import psycopg

    with psycopg.connect(url) as db, db.cursor() as cur:
        columns = "run_number, job_id, args, state, time, schedule_key, labels, summary"
        with cur.copy(f"COPY runs ({columns}) FROM STDIN") as copy:
            for row in source.execute(f"SELECT {columns} FROM runs"):
                copy.write_row((*row[:6], json.loads(row[6]), row[7]))
                copied += 1
        cur.execute("ANALYZE runs")
    source.close()
    return copied
