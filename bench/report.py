"""Figures, their targets, the machine they were measured on, and the report files."""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table


@dataclass(frozen=True)
class Target:
    """A bound a figure must meet: `value <op> limit` with op `>=` or `<=`."""

    op: str
    limit: float

    def met(self, value: float) -> bool:
        return value >= self.limit if self.op == ">=" else value <= self.limit

    def text(self, unit: str) -> str:
        return f"{self.op} {self.limit:g} {unit}".strip()


def at_least(limit: float) -> Target:
    return Target(">=", limit)


def at_most(limit: float) -> Target:
    return Target("<=", limit)


@dataclass(frozen=True)
class Figure:
    """One measured number of one scenario (None when it could not be measured)."""

    scenario: str
    name: str
    value: float | None
    unit: str = ""
    target: Target | None = None
    note: str = ""

    @property
    def passed(self) -> bool | None:
        if self.target is None or self.value is None:
            return None
        return self.target.met(self.value)

    def plain(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "figure": self.name,
            "measured": self.value,
            "unit": self.unit,
            "target": self.target.text(self.unit) if self.target else None,
            "passed": self.passed,
            "note": self.note,
        }


def median_figures(repetitions: Sequence[Sequence[Figure]]) -> list[Figure]:
    """Per figure name, the median over repetitions (figures keep the first run's order)."""
    out: list[Figure] = []
    for first in repetitions[0]:
        values = [
            f.value
            for rep in repetitions
            for f in rep
            if f.name == first.name and f.value is not None
        ]
        value = statistics.median(values) if values else None
        note = first.note
        if len(repetitions) > 1:
            note = f"median of {len(repetitions)}" + (f"; {note}" if note else "")
        out.append(replace(first, value=value, note=note))
    return out


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpuinfo = _read("/proc/cpuinfo")
    model = next(
        (line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if "model name" in line),
        platform.processor() or "unknown",
    )
    meminfo = _read("/proc/meminfo")
    total_kb = next(
        (int(line.split()[1]) for line in meminfo.splitlines() if line.startswith("MemTotal:")),
        0,
    )
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "ram_gb": round(total_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def write_report(figures: Sequence[Figure], out_dir: Path, options: dict[str, Any]) -> Path:
    """Write latest.json and a timestamped copy into `out_dir`; the latest file's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    info = machine()
    report = {
        "machine": info,
        "options": options,
        "figures": [f.plain() for f in figures],
    }
    text = json.dumps(report, indent=2) + "\n"
    stamp = info["date"].replace(":", "").replace("+0000", "Z")
    (out_dir / f"bench-{stamp}.json").write_text(text)
    latest = out_dir / "latest.json"
    latest.write_text(text)
    return latest


def _value(figure: Figure) -> str:
    if figure.value is None:
        return "n/a"
    v = figure.value
    if float(v).is_integer() and abs(v) < 1e9:
        return f"{int(v)} {figure.unit}".strip()
    text = f"{v:.0f}" if abs(v) >= 100 else f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"
    return f"{text} {figure.unit}".strip()


def print_table(figures: Sequence[Figure], console: Console | None = None) -> None:
    """The figures as a rich table: scenario, figure, target, measured, pass/fail."""
    table = Table(title="Apsis benchmark")
    for column in ("scenario", "figure", "target", "measured", "result", "note"):
        table.add_column(column, overflow="fold")
    marks = {True: "[green]pass[/]", False: "[red]FAIL[/]", None: "[dim]-[/]"}
    for f in figures:
        table.add_row(
            f.scenario,
            f.name,
            f.target.text(f.unit) if f.target else "",
            _value(f),
            marks[f.passed],
            f.note,
        )
    if console is None:
        console = Console()
        if not console.is_terminal:
            console = Console(width=150)
    console.print(table)


def markdown(report: dict[str, Any]) -> str:
    """A saved report as Markdown: the machine line and the figures table."""
    m = report["machine"]
    lines = [
        f"Measured {m['date']} on {m['nproc']} CPUs ({m['cpu']}), {m['ram_gb']} GB RAM,"
        f" Python {m['python']}, Linux {m.get('kernel', '?')}"
        + (" (quick)" if report["options"].get("quick") else "")
        + f"; commit {report['options'].get('commit', '?')}"
        + (" with uncommitted changes" if report["options"].get("code_modified") else "")
        + ".",
        "",
        "| scenario | figure | target | measured | result | note |",
        "|---|---|---|---|---|---|",
    ]
    marks = {True: "pass", False: "**FAIL**", None: ""}
    for f in report["figures"]:
        value = f["measured"]
        shown = "n/a" if value is None else _value(Figure("", "", value, f["unit"]))
        lines.append(
            f"| {f['scenario']} | {f['figure']} | {f['target'] or ''} | {shown}"
            f" | {marks[f['passed']]} | {f['note']} |"
        )
    return "\n".join(lines) + "\n"
