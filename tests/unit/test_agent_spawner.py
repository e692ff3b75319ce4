"""The spawner's small helpers: clear start errors, /proc facts, atomic writes."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from apsis_agent.spawner import cwd_error, exec_error, read_boot_id, read_stat, write_atomic


@pytest.mark.parametrize(
    ("code", "message"),
    [
        (errno.ENOENT, "no such file: /usr/bin/nope"),
        (errno.EACCES, "permission denied: /usr/bin/nope"),
        (errno.ENOEXEC, "exec format error: /usr/bin/nope"),
        (errno.E2BIG, "cannot execute /usr/bin/nope: Argument list too long"),
    ],
)
def test_exec_errors(code: int, message: str) -> None:
    assert exec_error(OSError(code, os.strerror(code)), "/usr/bin/nope") == message


@pytest.mark.parametrize(
    ("code", "message"),
    [
        (errno.ENOENT, "no such directory: /nope"),
        (errno.ENOTDIR, "not a directory: /nope"),
        (errno.EACCES, "permission denied: /nope"),
    ],
)
def test_cwd_errors(code: int, message: str) -> None:
    assert cwd_error(OSError(code, os.strerror(code)), "/nope") == message


def test_read_stat_of_this_process() -> None:
    stat = read_stat(os.getpid())
    assert stat is not None
    pgid, session, ticks = stat
    assert pgid == os.getpgid(0) and session == os.getsid(0) and ticks > 0
    assert read_stat(2**22 + 1) is None  # beyond pid_max: no such process


def test_boot_id_is_stable() -> None:
    assert read_boot_id() == read_boot_id() != ""


def test_write_atomic_replaces_whole_files(tmp_path: Path) -> None:
    target = tmp_path / "exit"
    write_atomic(str(target), b"first", sync=True)
    write_atomic(str(target), b"second")
    assert target.read_bytes() == b"second"
    assert target.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["exit"]


def test_write_atomic_empties_what_a_crash_left(tmp_path: Path) -> None:
    """A longer temporary file, or blank, left written by a crash does not show
    through a shorter new text (blanks are emptied only when not empty)."""
    (tmp_path / "exit.tmp").write_bytes(b"left by a crash, longer than the text")
    write_atomic(str(tmp_path / "exit"), b"{}")
    assert (tmp_path / "exit").read_bytes() == b"{}"
    (tmp_path / ".blank-pid").write_bytes(b"a pid file a crash left as the blank")
    write_atomic(str(tmp_path / "pid"), b"{}")
    assert (tmp_path / "pid").read_bytes() == b"{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exit", "pid"]
