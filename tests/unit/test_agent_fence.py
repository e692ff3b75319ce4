"""The agent's fence against deposed leaders, when its file cannot be written."""

from __future__ import annotations

from pathlib import Path

import pytest

from apsis_agent.fence import Fence
from apsis_common.errors import Conflict


def test_a_newer_epoch_fences_even_when_the_disk_refuses_it(tmp_path: Path) -> None:
    """A full disk (here: a path that cannot be written) does not fail the new
    leader's request (chaos campaign: a traceback and a 500 each time): the epoch
    fences from memory and reaches the file with a later request."""
    path = tmp_path / "leader_epoch"
    fence = Fence(path)
    path.mkdir()  # in the file's way: writing it fails
    fence.admit("5")
    with pytest.raises(Conflict, match="older than epoch 5"):
        fence.admit("4")
    assert [p.name for p in tmp_path.iterdir()] == ["leader_epoch"], "no temp file left"
    path.rmdir()
    fence.admit("5")  # the same leader again: now written
    assert path.read_text() == "5\n"
    assert Fence(path).newest == 5
