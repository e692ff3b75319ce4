"""Retention: moving finished runs out of the main store into an archive file.

Runs move in bounded chunks, each in two short transactions (copy into the
archive, then delete from the main file), so the event loop is never held for
long and a crash between the two leaves a run in both files, never in neither;
the next pass copies it again harmlessly.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from apsis_common.states import FINISHED

_FINISHED = ", ".join(f"'{s.value}'" for s in sorted(FINISHED))
_TABLES = ("runs", "run_log", "run_meta", "run_output", "run_stderr")


@dataclass(frozen=True)
class Retention:
    """Which finished runs to archive: older than `age` seconds, or beyond the
    newest `keep_per_job` runs of their job. None turns that rule off."""

    age: float | None = None
    keep_per_job: int | None = None


class Archiver:
    """Moves runs from one SQLite connection's main database to an archive file."""

    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        self._db = db
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        attached = {row[1] for row in db.execute("PRAGMA database_list")}
        if "archive" not in attached:
            db.execute("ATTACH DATABASE ? AS archive", (str(path),))
        for table in _TABLES:
            sql = db.execute(
                "SELECT sql FROM main.sqlite_master WHERE type = 'table' AND name = ?", (table,)
            ).fetchone()[0]
            create = f"CREATE TABLE IF NOT EXISTS archive.{table}"
            db.execute(sql.replace(f"CREATE TABLE {table}", create, 1))
            self._add_missing_columns(table)

    def _add_missing_columns(self, table: str) -> None:
        # An archive made by an older version lacks columns added since.
        have = {row[1] for row in self._db.execute(f"PRAGMA archive.table_info({table})")}
        for _, name, kind, notnull, default, _ in self._db.execute(
            f"PRAGMA main.table_info({table})"
        ).fetchall():
            if name not in have:
                extra = (" NOT NULL" if notnull else "") + (
                    f" DEFAULT {default}" if default is not None else ""
                )
                self._db.execute(f"ALTER TABLE archive.{table} ADD COLUMN {name} {kind}{extra}")

    def close(self) -> None:
        self._db.execute("DETACH DATABASE archive")

    def thresholds(self, keep_per_job: int) -> list[tuple[str, int]]:
        """Per job, the run number at and below which its runs exceed `keep_per_job`."""
        out = []
        for (job_id,) in self._db.execute("SELECT DISTINCT job_id FROM runs").fetchall():
            row = self._db.execute(
                "SELECT run_number FROM runs WHERE job_id = ? ORDER BY run_number DESC"
                " LIMIT 1 OFFSET ?",
                (job_id, keep_per_job),
            ).fetchone()
            if row is not None:
                out.append((job_id, int(row[0])))
        return out

    def candidates_by_age(self, before: float, limit: int) -> list[int]:
        rows = self._db.execute(
            f"SELECT run_number FROM runs WHERE time < ? AND state IN ({_FINISHED})"
            " ORDER BY run_number LIMIT ?",
            (before, limit),
        )
        return [int(r[0]) for r in rows]

    def candidates_by_count(self, job_id: str, at_most: int, limit: int) -> list[int]:
        rows = self._db.execute(
            f"SELECT run_number FROM runs WHERE job_id = ? AND run_number <= ?"
            f" AND state IN ({_FINISHED}) ORDER BY run_number LIMIT ?",
            (job_id, at_most, limit),
        )
        return [int(r[0]) for r in rows]

    def move(self, numbers: list[int]) -> int:
        """Copy these runs with their log, metadata and output to the archive, then
        delete them here; how many moved."""
        if not numbers:
            return 0
        marks = ", ".join("?" for _ in numbers)
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            for table in _TABLES:
                # A run copied before a crash is copied again whole, not twice.
                db.execute(f"DELETE FROM archive.{table} WHERE run_number IN ({marks})", numbers)
                db.execute(
                    f"INSERT INTO archive.{table} SELECT * FROM main.{table}"
                    f" WHERE run_number IN ({marks})",
                    numbers,
                )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("BEGIN IMMEDIATE")
        try:
            for table in _TABLES:
                db.execute(f"DELETE FROM main.{table} WHERE run_number IN ({marks})", numbers)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return len(numbers)
