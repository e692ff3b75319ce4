"""P5: a long history in the store — start time, memory, and history queries.

The SQLite file is generated directly with the store's own schema (the server's
`SqliteStore` creates it; rows go in with one executemany in one transaction):
finished runs of 100 jobs spread over the past months, ~90% success, ~8% failure,
~2% error, each job labelled `bench` and `team<i % 10>`. Only the `runs` table is
filled: it is the one the measured queries read. Generated files are cached under
bench/results/cache/ and copied into each server's state dir.
"""

from __future__ import annotations

import json
import random
import shutil
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from apsis_server.store.sqlite import SCHEMA_VERSION, SqliteStore
from bench.live import LiveServer, live_server, rss_mb
from bench.pg import load_history
from bench.report import Figure, at_most
from bench.stats import percentile

JOBS = 100
CACHE = Path(__file__).parent / "results" / "cache"
GENERATOR = 1  # bump when the generated content changes
PROGRAM = {"type": "process", "argv": ["/bin/true"], "env": {}, "env_inherit": True}


def job_id(i: int) -> str:
    return f"job{i:02d}"


def _rows(count: int) -> Iterator[tuple[Any, ...]]:
    rng = random.Random(5)
    now = time.time()
    for number in range(1, count + 1):
        i = rng.randrange(JOBS)
        draw = rng.random()
        state = "error" if draw < 0.02 else "failure" if draw < 0.10 else "success"
        t = now - (count - number) * 10.0 - 3600
        summary = {
            "schedule_time": t,
            "times": {
                "scheduled": t,
                "waiting": t,
                "starting": t + 0.001,
                "running": t + 0.01,
                state: t + 1.0,
            },
            "message": "exited 0" if state == "success" else "exited 1",
            "ad_hoc": False,
            "rerun_of": None,
            "stop_time": None,
            "program": PROGRAM,
            "proc_id": f"p{number}",
            "agent_id": "local",
            "attempt": 1,
        }
        labels = json.dumps(["bench", f"team{i % 10}"])
        yield (number, job_id(i), "{}", state, t, None, labels, json.dumps(summary))


def generate(path: Path, count: int) -> float:
    """Write a store with `count` finished runs to `path`; seconds it took."""
    started = time.monotonic()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    SqliteStore(path).close()  # the schema, exactly as the server makes it
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA synchronous = OFF")
    db.execute("BEGIN")
    db.executemany("INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?)", _rows(count))
    db.execute("COMMIT")
    db.close()
    return time.monotonic() - started


def cached_store(count: int) -> tuple[Path, float | None]:
    """The generated file for `count` runs, and the seconds spent making it (None if cached)."""
    path = CACHE / f"history-{count}-s{SCHEMA_VERSION}-g{GENERATOR}.db"
    if path.exists():
        return path, None
    tmp = path.with_suffix(".tmp")
    took = generate(tmp, count)
    tmp.rename(path)
    return path, took


def _jobs() -> dict[str, str]:
    return {
        job_id(i): (
            "program: {type: program, argv: [/bin/true]}\n"
            f"metadata: {{labels: [bench, team{i % 10}]}}\n"
        )
        for i in range(JOBS)
    }


def _latencies(server: LiveServer, paths: list[str]) -> list[float]:
    """Milliseconds per GET, one keep-alive client, requests one after another."""
    out: list[float] = []
    with httpx.Client(base_url=server.url + "/api/v1", timeout=30) as http:
        for path in paths:
            started = time.perf_counter()
            response = http.get(path)
            elapsed = time.perf_counter() - started
            if response.status_code != 200 or not response.json()["runs"]:
                raise RuntimeError(f"GET {path}: {response.status_code} {response.text[:200]}")
            out.append(elapsed * 1000)
    return out


def _measure(count: int, requests: int) -> dict[str, float | None]:
    store, _ = cached_store(count)
    with live_server(f"p5-{count}", _jobs()) as server:
        if server.store_url is not None:
            load_history(store, server.store_url)
        else:
            server.state.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(store, server.state / "apsis.db")
        start = server.launch(60)
        rss_up = rss_mb(server.pid)
        server.wait_agent()
        latest = [f"/runs?job_id={job_id(i % JOBS)}&limit=100" for i in range(requests)]
        filtered = [f"/runs?state=failure&label=team{i % 10}&limit=100" for i in range(requests)]
        _latencies(server, latest[:10] + filtered[:10])  # warm the connection and caches
        latest_ms = _latencies(server, latest)
        filtered_ms = _latencies(server, filtered)
        rss_after = rss_mb(server.pid)
    return {
        "start": start,
        "rss_up": rss_up,
        "rss_after": rss_after,
        "latest_p50": percentile(latest_ms, 50),
        "latest_p99": percentile(latest_ms, 99),
        "filtered_p50": percentile(filtered_ms, 50),
        "filtered_p99": percentile(filtered_ms, 99),
    }


def p5(quick: bool) -> list[Figure]:
    """P5: start, RSS and query latency with a big history, and RSS with a small one."""
    big = 100_000 if quick else 1_000_000
    small = 10_000
    requests = 50 if quick else 300
    _, took = cached_store(big)
    m = _measure(big, requests)
    s = _measure(small, 20)
    rss = max(v for v in (m["rss_up"], m["rss_after"]) if v is not None)
    small_rss = max(v for v in (s["rss_up"], s["rss_after"]) if v is not None)
    n = f"{big:,} runs"
    made = f"generated in {took:.1f}s" if took is not None else "store file cached"
    return [
        Figure("P5", f"start → /alive ({n})", m["start"], "s", at_most(2), made),
        Figure("P5", f"server RSS ({n})", rss, "MB", at_most(150), "max of at start, after"),
        Figure("P5", f"server RSS ({small:,} runs)", small_rss, "MB", at_most(150)),
        Figure("P5", "RSS growth with history", rss - small_rss, "MB", at_most(15)),
        Figure("P5", "latest 100 of a job p50", m["latest_p50"], "ms"),
        Figure("P5", "latest 100 of a job p99", m["latest_p99"], "ms", at_most(20)),
        Figure("P5", "failure+label page p50", m["filtered_p50"], "ms"),
        Figure("P5", "failure+label page p99", m["filtered_p99"], "ms", at_most(50)),
    ]
