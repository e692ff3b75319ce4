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
from apsis_agent.spawner import BLANK, BLANKS, open_new, write_atomic, write_new
from apsis_common.protocol import ProcSpec
from tests.harness import wait_for


def _spares(tmp_path: Path, limit: int = 8) -> Spares:
    spares = Spares(tmp_path / "spare", limit)
    spares.load()
    return spares


BLANK_NAMES = sorted(BLANK + name for name in BLANKS)


def _blank_only(directory: Path) -> bool:
    """Nothing but (empty) blanks in `directory`."""
    names = os.listdir(directory)
    return set(names) <= set(BLANK_NAMES) and all(
        os.path.getsize(directory / n) == 0 for n in names
    )


def test_load_keeps_empty_spares_and_removes_the_rest(tmp_path: Path) -> None:
    spare = tmp_path / "spare"
    for name in ("3", "7", "8", "junk"):
        (spare / name).mkdir(parents=True)
    (spare / "7" / (BLANK + "pid")).touch()  # blanks are what a spare holds
    (spare / "8" / "exit").write_text("{}")  # a crash while emptying
    (spare / "9").write_text("not a directory")
    spares = _spares(tmp_path)
    assert sorted(os.listdir(spare)) == ["3", "7"]
    assert len(spares) == 2
    spares.make(1)  # numbering goes on after what was there
    assert sorted(os.listdir(spare)) == ["3", "7", "8"]
    assert sorted(os.listdir(spare / "8")) == BLANK_NAMES and _blank_only(spare / "8")


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
    assert len(spares) == 3 and all(_blank_only(d) for d in (tmp_path / "spare").iterdir())


def test_create_takes_a_spare_but_never_replaces_a_directory(tmp_path: Path) -> None:
    procs = tmp_path / "procs"
    procs.mkdir()
    spares = _spares(tmp_path)
    spares.make(2)
    proc = registry.create(procs, "a", ProcSpec(argv=("true",)), spares)
    assert sorted(os.listdir(proc.directory)) == sorted(
        ["spec", *(n for n in BLANK_NAMES if n != BLANK + "spec")]
    )
    assert len(spares) == 1
    (procs / "b").mkdir()  # an empty directory left under the id: a rename would replace it
    with pytest.raises(FileExistsError):
        registry.create(procs, "b", ProcSpec(argv=("true",)), spares)
    assert len(spares) == 1


def test_a_run_from_a_spare_allocates_no_inode_for_its_files(tmp_path: Path) -> None:
    """spec, claim, pid and exit are the spare's blanks (the same inodes), and become
    blanks again, emptied, when the directory is recycled; outputs are made new."""
    procs = tmp_path / "procs"
    procs.mkdir()
    spares = _spares(tmp_path)
    spares.make(1)
    spare = tmp_path / "spare" / "0"
    inodes = {n: os.stat(spare / (BLANK + n)).st_ino for n in BLANKS}
    proc = registry.create(procs, "a", ProcSpec(argv=("true",)), spares)
    directory = proc.directory
    assert registry.claim(directory)
    assert not registry.claim(directory), "a claim is taken once"
    with pytest.raises(FileExistsError):
        write_new(str(directory / "claim"), b"")
    write_new(str(directory / "pid"), b'{"pid": 1}')
    write_atomic(str(directory / "exit"), b'{"status": 0}', sync=True)
    (directory / "output").write_text("out")
    assert sorted(os.listdir(directory)) == ["claim", "exit", "output", "pid", "spec"]
    assert {n: os.stat(directory / n).st_ino for n in BLANKS} == inodes
    assert (directory / "exit").read_bytes() == b'{"status": 0}'
    assert spares.recycle(directory)
    again = tmp_path / "spare" / os.listdir(tmp_path / "spare")[0]
    assert sorted(os.listdir(again)) == BLANK_NAMES and _blank_only(again)
    assert {n: os.stat(again / (BLANK + n)).st_ino for n in BLANKS} == inodes


def test_a_blank_left_linked_by_a_crash_is_emptied(tmp_path: Path) -> None:
    """A crash between a start's link and unlink leaves the blank as a second name
    of the file: the next file made from it starts empty, and recycling keeps one."""
    directory = tmp_path / "d"
    directory.mkdir()
    (directory / (BLANK + "pid")).write_bytes(b'{"pid": 123456789, "old": true}')
    os.link(directory / (BLANK + "pid"), directory / "pid")
    os.unlink(directory / "pid")  # the file written, then recycled without its blank
    fd = open_new(str(directory / "pid"))
    os.write(fd, b"{}")
    os.close(fd)
    assert (directory / "pid").read_bytes() == b"{}"
    os.link(directory / "pid", directory / (BLANK + "pid"))  # the crash
    spares = _spares(tmp_path)
    assert spares.recycle(directory)
    (again,) = (tmp_path / "spare").iterdir()
    assert os.listdir(again) == [BLANK + "pid"] and _blank_only(again)


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
