"""Housekeeping against the real server: archive, retention, stats, vacuum."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path

from apsis_common.states import State
from apsis_server.core.runs import LogEntry, Run
from apsis_server.store.archive import Retention
from apsis_server.store.base import Changes, Chunk
from apsis_server.store.sqlite import SqliteStore
from tests.harness import run_async, running_server, wait_for

JOBS = {
    "work": "params: [n]\nprogram: 'echo work {{ n }}'\n",
    "archive": "program: {type: internal.archive, age: 0s, path: archive.db, chunk_size: 7}\n",
    "stats": "program: {type: internal.stats}\n",
    "vacuum": "program: {type: internal.vacuum}\n",
}


def _numbers(db: Path, table: str = "runs") -> set[int]:
    conn = sqlite3.connect(db)
    try:
        return {r[0] for r in conn.execute(f"SELECT run_number FROM {table}")}
    finally:
        conn.close()


def test_archive_moves_finished_runs_with_their_history(tmp_path: Path) -> None:
    with running_server(tmp_path, JOBS) as server:
        done = [server.schedule("work", {"n": str(i)}) for i in range(20)]
        for run_id in done:
            server.wait_finished(run_id)
        archive_run = server.schedule("archive")
        run = server.wait_finished(archive_run)
        assert run["state"] == "success" and "archived 20 runs" in run["message"], run
        report = json.loads(server.output(archive_run))
        assert report["archived"] == 20
        archive = server.state / "archive.db"
        moved = {int(r[1:]) for r in done}
        assert moved <= _numbers(archive)
        assert moved <= _numbers(archive, "run_output") and moved <= _numbers(archive, "run_log")
        assert not moved & _numbers(server.state / "apsis.db")
        assert server.api("GET", f"/runs/{done[0]}").status_code == 404
        conn = sqlite3.connect(archive)
        assert conn.execute("SELECT COUNT(*) FROM run_log").fetchone()[0] >= 20 * 4
        conn.close()

        stats_run = server.schedule("stats")
        assert server.wait_finished(stats_run)["state"] == "success"
        stats = json.loads(server.output(stats_run))
        assert stats["runs"].get("success", 0) >= 1 and stats["store_bytes"] > 0
        assert server.wait_finished(server.schedule("vacuum"))["state"] == "success"


def test_retention_policy_keeps_the_newest_per_job(tmp_path: Path) -> None:
    config = "retention: {keep_per_job: 3, period: 0.5s, archive: state/old.db}\n"
    with running_server(tmp_path, JOBS, config) as server:
        done = [server.schedule("work", {"n": str(i)}) for i in range(8)]
        # Older runs may be archived while we look, so look at the files only.

        def kept() -> set[int] | None:
            left = _numbers(server.state / "apsis.db")
            return left if len(left) == 3 and len(_numbers(server.state / "old.db")) == 5 else None

        assert wait_for(kept, 10, "retention") == {int(r[1:]) for r in done[-3:]}
        assert {int(r[1:]) for r in done[:5]} <= _numbers(server.state / "old.db")


def test_archive_steps_stay_short(tmp_path: Path) -> None:
    """Archiving 20,000 runs never holds the event loop for long in one step."""
    from apsis_server.engine.engine import Engine
    from apsis_server.engine.housekeeping import Housekeeping

    store = SqliteStore(tmp_path / "a.db")
    for base in range(0, 20_000, 5_000):
        store.write(
            Changes(
                runs={
                    f"r{n}": Run(
                        f"r{n}", f"job{n % 10}", {}, State.SUCCESS, float(n), {"success": float(n)}
                    )
                    for n in range(base + 1, base + 5_001)
                },
                log=[LogEntry(f"r{n}", float(n), "done") for n in range(base + 1, base + 5_001)],
                output=[Chunk(f"r{n}", 0, b"x" * 100) for n in range(base + 1, base + 5_001)],
            )
        )

    async def archive() -> tuple[int, float, float]:
        engine = Engine(store, None, None)  # type: ignore[arg-type]
        queue: asyncio.Queue[Run] = asyncio.Queue()
        housekeeping = Housekeeping(engine, store, queue, tmp_path / "archive.db", chunk_size=500)
        worst = 0.0
        done = False

        async def ticker() -> None:
            nonlocal worst
            while not done:
                start = time.perf_counter()
                await asyncio.sleep(0.001)
                worst = max(worst, time.perf_counter() - start - 0.001)

        task = asyncio.create_task(ticker())
        moved = await housekeeping.archive(Retention(age=0.0), tmp_path / "archive.db")
        done = True
        await task
        return moved, housekeeping.longest_step, worst

    moved, longest, stall = run_async(archive)
    store.close()
    assert moved == 20_000
    assert longest < 0.25 and stall < 0.25, (longest, stall)
