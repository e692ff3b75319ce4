"""Spare process directories: kept across restarts, taken by starts, refilled."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from apsis_agent import registry
from apsis_agent.remover import Remover
from apsis_agent.spares import Spares
from apsis_common.protocol import ProcSpec
from tests.harness import wait_for


def _spares(tmp_path: Path, limit: int = 8) -> Spares:
    spares = Spares(tmp_path / "spare", limit)
    spares.load()
    return spares


def test_load_keeps_empty_spares_and_removes_the_rest(tmp_path: Path) -> None:
    spare = tmp_path / "spare"
    for name in ("3", "7", "8", "junk"):
        (spare / name).mkdir(parents=True)
    (spare / "8" / "exit").write_text("{}")  # a crash while emptying
    (spare / "9").write_text("not a directory")
    spares = _spares(tmp_path)
    assert sorted(os.listdir(spare)) == ["3", "7"]
    assert len(spares) == 2
    spares.make(1)  # numbering goes on after what was there
    assert sorted(os.listdir(spare)) == ["3", "7", "8"]


def test_take_renames_a_spare_and_says_when_none_is_left(tmp_path: Path) -> None:
    spares = _spares(tmp_path)
    spares.make(1)
    inode = os.stat(tmp_path / "spare" / "0").st_ino
    assert spares.take(tmp_path / "p1")
    assert os.stat(tmp_path / "p1").st_ino == inode
    assert not spares.take(tmp_path / "p2")
    assert not (tmp_path / "p2").exists()


def test_make_and_recycle_stop_at_the_limit(tmp_path: Path) -> None:
    spares = _spares(tmp_path, limit=3)
    spares.make(10)
    assert len(spares) == 3
    used = tmp_path / "used"
    used.mkdir()
    assert not spares.recycle(used), "a full pool takes no more"
    assert spares.take(tmp_path / "p")
    (used / "exit").write_text("{}")
    assert spares.recycle(used)
    assert not used.exists()
    assert len(spares) == 3 and all(not os.listdir(d) for d in (tmp_path / "spare").iterdir())


def test_create_takes_a_spare_but_never_replaces_a_directory(tmp_path: Path) -> None:
    procs = tmp_path / "procs"
    procs.mkdir()
    spares = _spares(tmp_path)
    spares.make(2)
    proc = registry.create(procs, "a", ProcSpec(argv=("true",)), spares)
    assert sorted(os.listdir(proc.directory)) == ["spec"]
    assert len(spares) == 1
    (procs / "b").mkdir()  # an empty directory left under the id: a rename would replace it
    with pytest.raises(FileExistsError):
        registry.create(procs, "b", ProcSpec(argv=("true",)), spares)
    assert len(spares) == 1


def test_remover_recycles_and_fills_the_pool_when_starts_pause(tmp_path: Path) -> None:
    spares = _spares(tmp_path, limit=100)
    remover = Remover(quiet=0.3, max_wait=30.0, spares=spares)
    used = tmp_path / "used"
    used.mkdir()
    (used / "output").write_text("x")
    inode = os.stat(used).st_ino
    began = time.monotonic()
    while time.monotonic() - began < 0.6:  # starts keep coming: nothing is made
        remover.started()
        assert len(spares) == 0
        time.sleep(0.05)
    remover.remove(used)
    wait_for(lambda: len(spares) == 100, 10, "the pool to fill")
    assert not used.exists()
    inodes = {os.stat(d).st_ino for d in (tmp_path / "spare").iterdir()}
    assert inode in inodes, "the used directory should be one of the spares"
    remover.close()


def test_spares_on_another_file_system_are_not_used(tmp_path: Path) -> None:
    """A rename across file systems fails: starts make their directory, and a used
    directory is removed by the caller, instead of starts failing."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on another file system than the tests' temp dir")
    other = Path(tempfile.mkdtemp(dir=shm))
    try:
        spares = Spares(other / "spare", 4)
        spares.load()
        spares.make(1)
        assert not spares.take(tmp_path / "p")
        assert len(spares) == 1 and not (tmp_path / "p").exists()
        used = tmp_path / "used"
        used.mkdir()
        assert not spares.recycle(used)
        assert used.exists()
    finally:
        shutil.rmtree(other)
