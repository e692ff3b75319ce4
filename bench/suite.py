"""The scenario table and the `python -m bench` command line."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from bench import (
    concurrency,
    failover,
    fleet,
    history,
    output,
    pg,
    restarts,
    scheduling,
    throughput,
    watchers,
)
from bench.report import Figure, markdown, print_table, write_report

Scenario = Callable[[bool], list[Figure]]

SCENARIOS: dict[str, Scenario] = {
    "P1": throughput.p1,
    "P2": throughput.p2,
    "P3": scheduling.p3,
    "P4": scheduling.p4,
    "P5": history.p5,
    "P6": output.p6,
    "P7": concurrency.p7,
    "P8": watchers.p8,
    "P9": fleet.p9,
    "P10": restarts.p10,
    "P11": restarts.p11,
    "S1": scheduling.precision,
    "F1": failover.f1,
}

# Below this fraction of all CPUs busy the machine counts as quiet enough to measure.
QUIET = 0.15
ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def checkout() -> dict[str, str | bool]:
    """The commit measured, and whether the server/agent code differed from it."""

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=False, timeout=30
        )
        return done.stdout.strip()

    changed = git("status", "--porcelain", "--", "apsis_common", "apsis_server", "apsis_agent")
    return {"commit": git("rev-parse", "--short", "HEAD"), "code_modified": bool(changed)}


def cpu_busy(interval: float = 1.0) -> float:
    """The fraction of all CPUs busy over `interval` seconds (from /proc/stat)."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields), idle

    total0, idle0 = sample()
    time.sleep(interval)
    total1, idle1 = sample()
    return 1 - (idle1 - idle0) / max(1, total1 - total0)


def wait_quiet(limit: float, console: Console) -> float:
    """Wait up to `limit` seconds for the machine to be mostly idle; the busy fraction."""
    deadline = time.monotonic() + limit
    busy = cpu_busy()
    while busy > QUIET and time.monotonic() < deadline:
        console.print(f"  machine {busy:.0%} busy; waiting for it to quiet down…")
        busy = cpu_busy(3.0)
    return busy


def run_scenario(name: str, quick: bool, console: Console) -> list[Figure]:
    """One scenario's figures; a scenario that breaks gives one figure saying why."""
    console.print(f"[bold]{name}[/] {'(quick) ' if quick else ''}running…")
    started = time.monotonic()
    try:
        figures = SCENARIOS[name](quick)
    except Exception as exc:
        console.print(traceback.format_exc())
        figures = [Figure(name, "error", None, note=f"{type(exc).__name__}: {exc}"[:300])]
    console.print(f"[bold]{name}[/] done in {time.monotonic() - started:.1f}s")
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("scenarios", nargs="*", metavar="P1", help="scenarios (default: all)")
    parser.add_argument("--quick", action="store_true", help="a short smoke of each scenario")
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each scenario, wait up to this long for other load to stop",
    )
    parser.add_argument(
        "--store",
        choices=("sqlite", "postgres"),
        default="sqlite",
        help="the store the servers use (postgres: a cluster the bench starts, fsync on)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where the JSON goes (default bench/results[/postgres])",
    )
    parser.add_argument(
        "--markdown", action="store_true", help="print the latest report as Markdown and stop"
    )
    args = parser.parse_args(argv)
    out: Path = args.out or (RESULTS / "postgres" if args.store == "postgres" else RESULTS)
    if args.markdown:
        print(markdown(json.loads((out / "latest.json").read_text())), end="")
        return 0
    names = [n.upper() for n in args.scenarios] or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
    console = Console(stderr=True)
    figures: list[Figure] = []
    # Other work on a small machine skews the figures: keep the load beside them.
    load: dict[str, dict[str, float]] = {}
    with pg.store() if args.store == "postgres" else contextlib.nullcontext():
        for name in names:
            busy = wait_quiet(args.wait_quiet, console)
            load[name] = {"cpu_busy": round(busy, 3), "loadavg_1min": os.getloadavg()[0]}
            figures += run_scenario(name, args.quick, console)
    options = {
        "scenarios": names,
        "quick": args.quick,
        "store": args.store,
        "load_before": load,
        **checkout(),
    }
    latest = write_report(figures, out, options)
    print_table(figures)
    others = ", ".join(f"{n} {v['cpu_busy']:.0%}" for n, v in load.items())
    console.print(f"CPUs busy with other work before each scenario: {others}")
    console.print(f"report: {latest}")
    return 1 if any(f.name == "error" for f in figures) else 0
