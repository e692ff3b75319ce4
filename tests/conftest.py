"""Suite-wide safety net: no process started for a test outlives the test session."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from tests.harness import kill_all_under


@pytest.fixture(scope="session", autouse=True)
def no_stray_processes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    yield
    killed = kill_all_under(tmp_path_factory.getbasetemp())
    if killed:
        logging.getLogger(__name__).warning("killed %d stray test processes", len(killed))
