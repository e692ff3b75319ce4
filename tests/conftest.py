"""Suite-wide safety net: no process started for a test outlives the test session."""

from __future__ import annotations

import importlib
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path

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


EXAMPLE_PLUGIN = Path(__file__).parent / "plugins" / "apsis_example"


def _example_installed() -> bool:
    return any(p.name == "example-echo" for p in entry_points(group="apsis.programs"))


@pytest.fixture(scope="session")
def example_plugin() -> Path:
    """The example plugin package (tests/plugins/apsis_example), installed in the test
    virtualenv as a real package: `make` installs it, a virtualenv made otherwise
    gets it here. Servers started by tests load its entry points."""
    if not _example_installed():
        install = [sys.executable, "-m", "pip", "install", "-q", "-e", str(EXAMPLE_PLUGIN)]
        subprocess.run(install, check=True, timeout=300, stdin=subprocess.DEVNULL)
        importlib.invalidate_caches()
        if str(EXAMPLE_PLUGIN) not in sys.path:  # this process started before the install
            sys.path.append(str(EXAMPLE_PLUGIN))
    assert _example_installed(), "the example plugin's entry points are not installed"
    return EXAMPLE_PLUGIN


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
