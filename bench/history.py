"""P5: a long history in the store — start time, memory, and history queries.

The SQLite file is generated directly with the store's own schema (the server's
`SqliteStore` creates it; rows go in with one executemany in one transaction):
finished runs of 100 jobs spread over the past months, ~90% success, ~8% failure,
~2% error, each job labelled `bench` and `team<i % 10>`. Every run has what a real
store holds for it, in the proportions of the demo's runs: its log (five lines),
its metadata (pid, exit code, rusage…) and its output (1 to 34 lines, ~1 KB, one
zlib chunk). The report gives the store's size. Generated files are cached under
bench/results/cache/ and copied into each server's state dir.
"""

from __future__ import annotations

import json
import random
import shutil
import sqlite3
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from apsis_server.store.sqlite import SCHEMA_VERSION, SqliteStore
from bench.live import LiveServer, live_server, rss_mb
from bench.pg import database_mb, load_history
from bench.report import Figure, at_most
from bench.stats import percentile

JOBS = 100
CACHE = Path(__file__).parent / "results" / "cache"
GENERATOR = 2  # bump when the generated content changes
PROGRAM = {"type": "process", "argv": ["/bin/true"], "env": {}, "env_inherit": True}


def job_id(i: int) -> str:
    return f"job{i:02d}"


_LOG = ("scheduled", "waiting", "starting", "running")
_MESSAGES = {
    "scheduled": "scheduled by schedule",
    "waiting": "schedule time reached",
    "starting": "starting",
}


def _output(rng: random.Random, i: int, number: int) -> bytes:
    """A few lines to a few dozen, as the demo's jobs write: ~1 KB, compressible."""
    lines = rng.choice((1, 2, 3, 5, 8, 13, 21, 34))
    return "".join(
        f"{number}.{n} job{i:02d}: processed {rng.randrange(10_000)} records"
        f" in {rng.random():.3f}s\n"
        for n in range(lines)
    ).encode()


def _meta(rng: random.Random, number: int, t: float, code: int) -> dict[str, Any]:
    return {
        "pid": 1000 + number % 30000,
        "pgid": 1000 + number % 30000,
        "start_time": t + 0.01,
        "agent_id": "local",
        "exit_code": code,
        "signal": None,
        "core_dump": False,
        "rusage": {
            "utime": round(rng.random() / 10, 6),
            "stime": round(rng.random() / 100, 6),
            "maxrss": 10_000.0 + rng.randrange(5000),
            "minflt": 224.0,
            "majflt": 0.0,
            "inblock": 0.0,
            "oublock": 8.0,
            "nvcsw": 1.0,
            "nivcsw": 0.0,
        },
        "end_time": t + 1.0,
        "elapsed": 0.99,
    }


Rows = dict[str, list[tuple[Any, ...]]]


def _rows(count: int, batch: int = 10_000) -> Iterator[Rows]:
    """Every table's rows for `count` finished runs, `batch` runs at a time: the run,
    its log (one line per state), its metadata and its output (one zlib chunk, as the
    store writes it)."""
    rng = random.Random(5)
    now = time.time()
    rows: Rows = {"runs": [], "run_log": [], "run_meta": [], "run_output": []}
    for number in range(1, count + 1):
        i = rng.randrange(JOBS)
        draw = rng.random()
        state = "error" if draw < 0.02 else "failure" if draw < 0.10 else "success"
        code = 0 if state == "success" else 1
        t = now - (count - number) * 10.0 - 3600
        times = {"scheduled": t, "waiting": t, "starting": t + 0.001, "running": t + 0.01}
        message = "exited 0" if state == "success" else "exited 1"
        summary = {
            "schedule_time": t,
            "times": {**times, state: t + 1.0},
            "message": message,
            "ad_hoc": False,
            "rerun_of": None,
            "stop_time": None,
            "program": PROGRAM,
            "proc_id": f"p{number}",
            "agent_id": "local",
            "attempt": 1,
        }
        labels = json.dumps(["bench", f"team{i % 10}"])
        rows["runs"].append((number, job_id(i), "{}", state, t, None, labels, json.dumps(summary)))
        for s in _LOG:
            text = f"running as pid {1000 + number % 30000}" if s == "running" else _MESSAGES[s]
            rows["run_log"].append((number, times[s], s, text, None))
        rows["run_log"].append((number, t + 1.0, state, message, None))
        meta = _meta(rng, number, t, code)
        output = _output(rng, i, number)
        meta["output_length"] = len(output)
        rows["run_meta"].append((number, json.dumps(meta)))
        rows["run_output"].append((number, 0, len(output), zlib.compress(output, 1), "zlib"))
        if number % batch == 0 or number == count:
            yield rows
            rows = {name: [] for name in rows}


def generate(path: Path, count: int) -> float:
    """Write a store with `count` finished runs to `path`; seconds it took."""
    started = time.monotonic()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    SqliteStore(path).close()  # the schema, exactly as the server makes it
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA synchronous = OFF")
    db.execute("BEGIN")
    for rows in _rows(count):
        db.executemany("INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows["runs"])
        db.executemany(
            "INSERT INTO run_log (run_number, time, state, message, server) VALUES (?, ?, ?, ?, ?)",
            rows["run_log"],
        )
        db.executemany("INSERT INTO run_meta VALUES (?, ?)", rows["run_meta"])
        db.executemany(
            "INSERT INTO run_output (run_number, offset, length, data, codec)"
            " VALUES (?, ?, ?, ?, ?)",
            rows["run_output"],
        )
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


def _check_a_run(server: LiveServer) -> None:
    """The history is what a real store holds: an old run has its log and output."""
    run = server.get(f"/runs?job_id={job_id(0)}&limit=1")["runs"][0]
    log = server.get(f"/runs/{run['run_id']}/log")["log"]
    with httpx.Client(base_url=server.url + "/api/v1", timeout=30) as http:
        output = http.get(f"/runs/{run['run_id']}/output")
    if len(log) != 5 or output.status_code != 200 or b"processed" not in output.content:
        raise RuntimeError(f"run {run['run_id']}: log {log}, output {output.content[:200]!r}")


def _measure(count: int, requests: int) -> dict[str, float | None]:
    store, _ = cached_store(count)
    with live_server(f"p5-{count}", _jobs()) as server:
        if server.store_url is not None:
            load_history(store, server.store_url)
            size = database_mb(server.store_url)
        else:
            server.state.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(store, server.state / "apsis.db")
            size = store.stat().st_size / 1e6
        start = server.launch(60)
        rss_up = rss_mb(server.pid)
        server.wait_agent()
        latest = [f"/runs?job_id={job_id(i % JOBS)}&limit=100" for i in range(requests)]
        filtered = [f"/runs?state=failure&label=team{i % 10}&limit=100" for i in range(requests)]
        _latencies(server, latest[:10] + filtered[:10])  # warm the connection and caches
        latest_ms = _latencies(server, latest)
        filtered_ms = _latencies(server, filtered)
        rss_after = rss_mb(server.pid)
        _check_a_run(server)
    return {
        "size": size,
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
        Figure("P5", f"store size ({n})", m["size"], "MB", note="runs, log, meta and output"),
        Figure("P5", f"start → /alive ({n})", m["start"], "s", at_most(2), made),
        Figure("P5", f"server RSS ({n})", rss, "MB", at_most(150), "max of at start, after"),
        Figure("P5", f"server RSS ({small:,} runs)", small_rss, "MB", at_most(150)),
        Figure("P5", "RSS growth with history", rss - small_rss, "MB", at_most(15)),
        Figure("P5", "latest 100 of a job p50", m["latest_p50"], "ms"),
        Figure("P5", "latest 100 of a job p99", m["latest_p99"], "ms", at_most(20)),
        Figure("P5", "failure+label page p50", m["filtered_p50"], "ms"),
        Figure("P5", "failure+label page p99", m["filtered_p99"], "ms", at_most(50)),
    ]
