"""The store's write-ahead log is copied into the database file by a thread of its
own (commits never checkpoint), and nothing committed waits on it."""

from __future__ import annotations

import os
import random
from pathlib import Path

from apsis_server.store.base import Changes, Chunk
from apsis_server.store.sqlite import SqliteStore
from tests.harness import wait_for


def test_the_log_is_checkpointed_in_the_background(tmp_path: Path) -> None:
    path = tmp_path / "apsis.db"
    store = SqliteStore(path)
    chunk = random.Random(7).randbytes(256 * 1024)  # does not compress
    try:
        for i in range(40):  # 10 MiB, one commit each 256 KiB
            store.write(Changes(output=[Chunk("r1", i * len(chunk), chunk)]))
        assert store.output_length("r1") == 40 * len(chunk)
        # The database file itself gets the bytes while the store stays open.
        wait_for(lambda: path.stat().st_size >= 40 * len(chunk), 10, "a checkpoint")
        wal = Path(f"{path}-wal")
        assert not wal.exists() or wal.stat().st_size <= 64 << 20
    finally:
        store.close()
    # Closed: the log is folded in and removed; a new store reads everything back.
    assert not os.path.exists(f"{path}-wal")
    again = SqliteStore(path)
    try:
        assert again.output("r1", 0, 40 * len(chunk)) == chunk * 40
    finally:
        again.close()
