"""The scenario table and the `python -m bench` command line."""

from __future__ import annotations

import argparse
import os
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from bench import concurrency, history, output, scheduling, throughput, watchers
from bench.report import Figure, print_table, write_report

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
}

RESULTS = Path(__file__).parent / "results"


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
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the JSON goes")
    args = parser.parse_args(argv)
    names = [n.upper() for n in args.scenarios] or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
    console = Console(stderr=True)
    figures: list[Figure] = []
    # Other work on a small machine skews the figures: keep the load beside them.
    load: dict[str, float] = {}
    for name in names:
        load[name] = round(os.getloadavg()[0], 2)
        figures += run_scenario(name, args.quick, console)
    options = {"scenarios": names, "quick": args.quick, "load_1min_before": load}
    latest = write_report(figures, args.out, options)
    print_table(figures)
    console.print(f"report: {latest}")
    return 1 if any(f.name == "error" for f in figures) else 0
