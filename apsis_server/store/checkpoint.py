"""Checkpoints of the store's write-ahead log, in a thread of their own.

In WAL mode a commit appends to the log; a checkpoint copies the log into the
database file and syncs both. SQLite runs one by itself inside whichever commit
takes the log past 1,000 pages, which put two fsyncs and a copy of ~4 MB on the
event loop every few commits while output streamed in (P6: ~110 → ~150 MB/s
without). The store turns that off and this thread runs passive checkpoints on
a connection of its own: they never block the writer, and copy what no reader
still needs. The log may grow between two checkpoints; `journal_size_limit`
gives the space back once it is copied.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path

log = logging.getLogger(__name__)

# Seconds between two checkpoints; one with nothing to copy costs microseconds.
INTERVAL = 0.25


class Checkpointer:
    """Runs `PRAGMA wal_checkpoint(PASSIVE)` on `path` every `interval` seconds."""

    def __init__(self, path: Path, interval: float = INTERVAL) -> None:
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="checkpoint", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        failing = False
        while not self._stop.wait(self._interval):
            try:
                self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                failing = False
            except sqlite3.Error as exc:
                if not failing:  # once per series, not four times a second
                    log.warning("store checkpoint failed (retrying): %s", exc)
                failing = True

    def close(self) -> None:
        """Stop; the store's own connection, closed last, runs the final checkpoint."""
        self._stop.set()
        self._thread.join()
        self._db.close()
