"""The store opens a database of every earlier schema version and brings it forward,
keeping what it held; a newer database is refused."""

from __future__ import annotations

import sqlite3
import zlib
from pathlib import Path

import pytest

from apsis_server.store.archive import Archiver
from apsis_server.store.base import Changes, Chunk, OutputName
from apsis_server.store.sqlite import MIGRATIONS, SCHEMA_VERSION, SqliteStore


def _at_version(path: Path, version: int) -> None:
    db = sqlite3.connect(path, isolation_level=None)
    for migration in MIGRATIONS[:version]:
        for statement in migration.split(";"):
            if statement.strip():
                db.execute(statement)
    db.execute(f"PRAGMA user_version = {version}")
    if version >= 1:
        db.execute(
            "INSERT INTO runs VALUES (1, 'old/job', '{}', 'success', 5.0, NULL, '[]', ?)",
            (
                '{"schedule_time": 5.0, "times": {"success": 6.0}, "message": "exited 0",'
                ' "ad_hoc": false, "rerun_of": null, "stop_time": null, "program": null,'
                ' "proc_id": null, "agent_id": null, "attempt": 1}',
            ),
        )
        db.execute(
            "INSERT INTO run_output (run_number, offset, length, data) VALUES (1, 0, 6, ?)",
            (zlib.compress(b"hello\n"),),
        )
    db.close()


@pytest.mark.parametrize("version", range(SCHEMA_VERSION))
def test_migrates_forward_from(version: int, tmp_path: Path) -> None:
    path = tmp_path / "apsis.db"
    _at_version(path, version)
    store = SqliteStore(path)
    assert store.schema_version() == SCHEMA_VERSION
    if version >= 1:
        run = store.get("r1")
        assert run is not None and run.job_id == "old/job" and run.retry == 0
        assert store.output("r1") == b"hello\n"
        # Output stored before stdout and stderr were kept apart: stdout, both.
        assert store.output("r1", name=OutputName.STDOUT) == b"hello\n"
        assert store.output("r1", name=OutputName.STDERR) == b""
    store.write(Changes(output=[Chunk("r2", 0, b"new\n"), Chunk("r3", 0, bytes(range(256)) * 64)]))
    assert store.output("r2") == b"new\n"
    assert store.output("r3") == bytes(range(256)) * 64
    store.close()


def test_newer_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "apsis.db"
    SqliteStore(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(RuntimeError, match="newer"):
        SqliteStore(path)


def test_archive_of_an_older_version_gains_new_columns(tmp_path: Path) -> None:
    old = tmp_path / "archive.db"
    _at_version(old, 1)
    store = SqliteStore(tmp_path / "apsis.db")
    store.write(Changes(output=[Chunk("r9", 0, b"x")]))
    archiver = Archiver(store._db, old)
    assert archiver.move([9]) == 1
    archiver.close()
    columns = [r[1] for r in sqlite3.connect(old).execute("PRAGMA table_info(run_output)")]
    assert "codec" in columns
    store.close()
