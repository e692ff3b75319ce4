"""The chaos campaign (spec/05-quality.md, scenario 8; tests/chaos/README.md): a
2-minute smoke in `make test`, a long campaign in `make chaos`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.chaos.campaign import (
    FAULTS_POSTGRES,
    FAULTS_SQLITE,
    Report,
    postgres_world,
    run_campaign,
    seed_from_env,
    sqlite_world,
)

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
SMOKE_SEED = 20261207


def _verdict(report: Report) -> None:
    print(report.summary())
    if report.problems:
        problems = "\n".join(report.problems[:50])
        raise AssertionError(
            f"{report.summary()}\nreplay: APSIS_CHAOS_SEED={report.seed}\n"
            f"problems:\n{problems}\nhistory:\n{report.history}"
        )


@needs_root
@pytest.mark.timeout(150)
def test_chaos_smoke(tmp_path: Path) -> None:
    """One seed, 40 s of faults (each kind at least once) on one server and its
    local agent."""
    seed = int(os.environ.get("APSIS_CHAOS_SEED") or SMOKE_SEED)
    with sqlite_world(tmp_path) as world:
        report = run_campaign(world, seed, 40, FAULTS_SQLITE, gap=(1.0, 3.0), settle=50)
    _verdict(report)


def _minutes() -> float:
    return float(os.environ.get("APSIS_CHAOS_MINUTES", "20"))


@needs_root
@pytest.mark.slow
@pytest.mark.timeout(int(_minutes() * 60 + 600))
def test_chaos_campaign_sqlite(tmp_path: Path) -> None:
    """Half the long campaign: one server on SQLite, every fault but the leader's death."""
    with sqlite_world(tmp_path) as world:
        report = run_campaign(world, seed_from_env(), _minutes() * 30, FAULTS_SQLITE)
    _verdict(report)


@needs_root
@pytest.mark.slow
@pytest.mark.timeout(int(_minutes() * 60 + 600))
def test_chaos_campaign_postgres(tmp_path: Path, postgres_url: str) -> None:
    """The other half: two servers on PostgreSQL, a static agent; the leader dies."""
    with postgres_world(tmp_path, postgres_url) as world:
        report = run_campaign(world, seed_from_env(), _minutes() * 30, FAULTS_POSTGRES)
    _verdict(report)
