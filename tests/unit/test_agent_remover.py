"""Removing process directories: known files, leftovers of a crash, in quiet moments."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from apsis_agent.remover import Remover, remove_dir
from apsis_agent.state import spread_subdirs
from tests.harness import wait_for


def _proc_dir(root: Path, name: str, *files: str) -> Path:
    directory = root / name
    directory.mkdir()
    for file in files:
        (directory / file).write_bytes(b"x")
    return directory


def test_remove_dir_takes_known_files_and_leftovers(tmp_path: Path) -> None:
    plain = _proc_dir(tmp_path, "a", "spec", "pid", "exit", "output")
    crashed = _proc_dir(tmp_path, "b", "spec", "exit.tmp", "pid")
    remove_dir(plain)
    remove_dir(crashed)
    remove_dir(tmp_path / "never-there")
    assert list(tmp_path.iterdir()) == []


def test_remover_removes_in_the_background_and_finishes_on_close(tmp_path: Path) -> None:
    remover = Remover()
    first = _proc_dir(tmp_path, "first", "spec", "output")
    remover.remove(first)
    wait_for(lambda: not first.exists(), 5, "the first directory to go")
    rest = [_proc_dir(tmp_path, f"p{i}", "spec", "pid", "exit", "output") for i in range(50)]
    for directory in rest:
        remover.remove(directory)
    remover.close()
    assert list(tmp_path.iterdir()) == []


def test_removal_waits_while_programs_start_then_goes_on(tmp_path: Path) -> None:
    remover = Remover(quiet=0.3, max_wait=30.0)
    directory = _proc_dir(tmp_path, "p", "spec", "pid", "exit", "output")
    remover.started()
    remover.remove(directory)
    for _ in range(6):  # starts keep coming for 0.6 s: the directory stays
        time.sleep(0.1)
        remover.started()
        assert directory.exists()
    wait_for(lambda: not directory.exists(), 5, "removal after starts paused")
    remover.close()


def test_removal_waits_no_longer_than_max_wait(tmp_path: Path) -> None:
    remover = Remover(quiet=0.3, max_wait=0.5)
    directory = _proc_dir(tmp_path, "p", "spec", "output")
    remover.started()  # before the directory is queued, or the thread may find quiet
    queued = time.monotonic()
    remover.remove(directory)
    while directory.exists():  # starts never pause
        remover.started()
        time.sleep(0.02)
        assert time.monotonic() - queued < 5
    assert time.monotonic() - queued >= 0.5
    remover.close()


def test_close_removes_what_waits_without_waiting_for_quiet(tmp_path: Path) -> None:
    remover = Remover(quiet=60.0, max_wait=60.0)
    remover.started()
    for i in range(5):
        remover.remove(_proc_dir(tmp_path, f"p{i}", "spec", "output"))
    time.sleep(0.2)  # the thread is waiting for quiet
    began = time.monotonic()
    remover.close()
    assert time.monotonic() - began < 5
    assert list(tmp_path.iterdir()) == []


def test_spread_subdirs_sets_the_flag_where_the_file_system_has_it(tmp_path: Path) -> None:
    # ext2/3/4 take the flag; other file systems (tmpfs, overlay) refuse it quietly.
    if spread_subdirs(tmp_path):
        lsattr = subprocess.run(["lsattr", "-d", str(tmp_path)], capture_output=True, text=True)
        assert lsattr.returncode != 0 or "T" in lsattr.stdout.split()[0]
        assert spread_subdirs(tmp_path) is True  # already set: still fine
    assert spread_subdirs(tmp_path / "missing") is False
