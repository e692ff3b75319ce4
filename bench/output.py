"""P6: one run writing 100 MB to stdout, through the agent into the store.

The program writes a known pattern (a seeded 1 MiB random block, repeated: it does
not compress, so the store's zlib does real work), so the expected sha256 is
computed here without capturing anything. The output is read back through the API
in 8 MB ranges. The server runs with `output.max_bytes` raised to 256 MiB: at
its 64 MiB default it keeps only the first and last 32 MiB of a bigger output.
Memory of server and agent (daemon, spawner and supervisors: `agent_mb`) is sampled
every 50 ms from one idle second before anything ran (a 1 MB warm-up run comes
next) to one second after success; the increase is over the median of that idle
second.
"""

from __future__ import annotations

import hashlib
import json
import random
import statistics
import sys
import time

import httpx

from bench.live import LiveServer, RssSampler, live_server
from bench.report import Figure, at_least, at_most
from bench.stats import epoch

BLOCK = 1 << 20
SEED = 7
WRITER = (
    "import random, sys\n"
    "n = int(sys.argv[1])\n"
    f"b = random.Random({SEED}).randbytes({BLOCK})\n"
    "w = sys.stdout.buffer.write\n"
    f"for _ in range(n // {BLOCK}):\n"
    "    w(b)\n"
    f"w(b[: n % {BLOCK}])\n"
)
RANGE = 8_000_000
WARM_UP = 1_000_000  # a first, small run: connections and code paths warmed, memory not
# The server keeps only the head and tail of output over `output.max_bytes` (64 MiB
# by default); P6 is about moving 100 MB whole, so the cap is raised above it.
CONFIG = "output: {max_bytes: 256 MiB}\n"


def expected_sha256(size: int) -> str:
    block = random.Random(SEED).randbytes(BLOCK)
    digest = hashlib.sha256()
    for _ in range(size // BLOCK):
        digest.update(block)
    digest.update(block[: size % BLOCK])
    return digest.hexdigest()


def _job(size: int) -> str:
    program = {"type": "program", "argv": [sys.executable, "-c", WRITER, str(size)]}
    return f"program: {json.dumps(program)}\n"


def fetch_sha256(server: LiveServer, run_id: str) -> tuple[str, int, float]:
    """sha256 of the stored output read in ranges, its length, and the seconds it took."""
    digest = hashlib.sha256()
    started = time.monotonic()
    offset = 0
    with httpx.Client(base_url=server.url + "/api/v1", timeout=60) as http:
        while True:
            response = http.get(
                f"/runs/{run_id}/output", params={"start": offset, "stop": offset + RANGE}
            )
            response.raise_for_status()
            length = int(response.headers["x-apsis-output-length"])
            digest.update(response.content)
            offset += len(response.content)
            if offset >= length or not response.content:  # stop at an omitted middle too
                return digest.hexdigest(), offset, time.monotonic() - started


def _idle(samples: list[float], count: int) -> float:
    return statistics.median(samples[:count]) if samples else 0.0


def p6(quick: bool) -> list[Figure]:
    """P6: byte-exact output, its throughput, and the memory it costs."""
    size = 10_000_000 if quick else 100_000_000
    mb = size / 1e6
    jobs = {"write": _job(size), "warm": _job(WARM_UP)}
    with live_server("p6", jobs, CONFIG) as server:
        server.launch()
        agent = server.wait_agent()
        with RssSampler({"server": server.pid, "agent": agent}, 0.05, agents=["agent"]) as rss:
            time.sleep(1.0)  # the baseline: before anything ran
            idle_n = {name: len(v) for name, v in rss.samples.items()}
            done = server.post("/runs?wait=30", {"job_id": "warm", "args": {}})
            if done["run"]["state"] != "success":
                raise RuntimeError(f"warm-up run ended {done['run']['state']}")
            submitted = time.time()
            run_id = server.schedule("write")
            run = server.wait_finished(run_id, 300)
            time.sleep(1.0)
        sha, length, fetch_s = fetch_sha256(server, run_id)
    times = {k: epoch(v) for k, v in run["times"].items()}
    end = times.get("success", time.time())
    exact = sha == expected_sha256(size) and length == size
    grow = {
        name: (rss.peak(name) or 0.0) - _idle(rss.samples[name], idle_n[name])
        for name in ("server", "agent")
    }
    return [
        Figure("P6", "run state", float(run["state"] == "success"), "success", at_least(1)),
        Figure(
            "P6",
            f"output byte-exact ({mb:g} MB)",
            float(exact),
            "sha256 match",
            at_least(1),
            "output.max_bytes raised to 256 MiB (default 64 MiB keeps head and tail only)",
        ),
        Figure("P6", "running → success", mb / (end - times["running"]), "MB/s", at_least(100)),
        Figure("P6", "submit → success", mb / (end - submitted), "MB/s"),
        Figure("P6", "server RSS over idle", grow["server"], "MB", at_most(64)),
        Figure(
            "P6",
            "agent RSS over idle",
            grow["agent"],
            "MB",
            at_most(64),
            "daemon + spawner + supervisors, PSS",
        ),
        Figure("P6", "read back through the API", mb / fetch_s, "MB/s"),
    ]
