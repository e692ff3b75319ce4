"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.sshd import SshWorld


@pytest.fixture
def world(tmp_path: Path) -> Iterator[SshWorld]:
    """A real sshd (and its client configuration) on loopback, stopped afterwards."""
    world = SshWorld(tmp_path / "ssh")
    try:
        yield world
    finally:
        world.stop()
