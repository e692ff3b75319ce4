"""A short smoke of the benchmark: `python -m bench --quick P1` runs and reports its figures.

Only the report's shape is checked, never the values: figures are read from the
benchmark's report on a quiet machine, not asserted by tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
P1_FIGURES = {
    "runs/s end to end",
    "submit→start p50",
    "submit→start p99",
    "runs succeeded",
}


@pytest.mark.timeout(60)
def test_quick_p1_reports_its_figures(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "P1", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=55,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((tmp_path / "latest.json").read_text())
    assert list(tmp_path.glob("bench-*.json")), "no timestamped copy"
    assert {"nproc", "cpu", "ram_gb", "python", "date"} <= set(report["machine"])
    figures = {f["figure"]: f for f in report["figures"] if f["scenario"] == "P1"}
    assert set(figures) >= P1_FIGURES, sorted(figures)
    for name in P1_FIGURES:
        assert isinstance(figures[name]["measured"], int | float), figures[name]
    assert figures["runs/s end to end"]["target"] is not None


P9_FIGURES = {
    "idle server CPU",
    "idle server RSS",
    "idle agent CPU-s a minute, median",
    "idle agent CPU-s a minute, max",
    "runs/s end to end",
    "submit→start p50",
    "submit→start p99",
    "runs succeeded",
    "agents that got a run",
}


@pytest.mark.timeout(90)
def test_quick_p9_reports_its_figures(tmp_path: Path) -> None:
    """P9 with 20 static agents (each its own `apsis-agent serve`): ~40 s on a busy machine."""
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "P9", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=85,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((tmp_path / "latest.json").read_text())
    figures = {f["figure"]: f for f in report["figures"] if f["scenario"] == "P9"}
    assert set(figures) >= P9_FIGURES, sorted(figures)
    for name in P9_FIGURES:
        assert isinstance(figures[name]["measured"], int | float), figures[name]
    for name in ("idle server CPU", "idle agent CPU-s a minute, max", "agents that got a run"):
        assert figures[name]["target"] is not None, figures[name]
