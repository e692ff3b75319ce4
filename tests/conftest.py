"""Suite-wide safety net: no process started for a test outlives the test session."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pytest
from hypothesis import settings

from tests.harness import kill_all_under, kill_cgroups_under
from tests.postgres import SKIP_REASON, Cluster, binaries, cluster

# In CI the property and fuzz tests replay the same examples on every run, so a red
# build always means a change; developers' runs keep exploring new ones.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture(scope="session", autouse=True)
def no_stray_processes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    yield
    killed = kill_all_under(tmp_path_factory.getbasetemp())
    if killed:
        logging.getLogger(__name__).warning("killed %d stray test processes", len(killed))
    # The run cgroups of agents killed without a word (a test server's local agent).
    kill_cgroups_under(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def postgres() -> Iterator[Cluster]:
    """A PostgreSQL cluster of the session's own (tests/postgres.py), started on first use."""
    if binaries() is None:
        pytest.skip(SKIP_REASON)
    with cluster() as running:
        yield running


@pytest.fixture
def postgres_url(postgres: Cluster) -> Iterator[str]:
    """A fresh, empty database of the session's cluster, dropped after the test."""
    url = postgres.database()
    yield url
    postgres.drop(url)
