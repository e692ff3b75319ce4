"""Spare process directories: directories a start renames into `procs/`, empty
but for the blank files that become its spec, claim, pid and exit (spawner.py,
`BLANKS`).

Making a directory was the dearest step of a start: ext4's Orlov allocator,
which spreads `procs/`'s subdirectories over block groups (see
`state.spread_subdirs`), looks at every group for each one (~130 us of CPU
here, a sixth of the agent's work per run in a burst of starts). Renaming an
empty directory into `procs/` costs a few microseconds. So the agent keeps up to
`LIMIT` empty directories in `<state>/spare/`: the remover's thread makes them
when starts pause, and a reported process directory, once emptied, becomes one
instead of being removed. A start with no spare left makes its directory.

A directory enters `spare/` before it is emptied (one rename out of `procs/`),
so a process directory is never half-empty under its name; one found with more
than blanks in it at start-up (a crash while emptying) is removed. Emptying keeps
the files that have blanks, emptied and renamed back: a run then frees no inode
for them either (see `BLANKS` for why that matters).
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import os
import shutil
from pathlib import Path

from apsis_agent.spawner import BLANK, BLANKS
from apsis_agent.state import spread_subdirs

# Spares kept: a burst of this many starts makes no directory (each ~4 KB on ext4).
LIMIT = 2048


class Spares:
    """The pool of empty directories under `path`; `take` on the event loop, the
    rest on the remover's thread (a deque's append and pop are atomic)."""

    def __init__(self, path: Path, limit: int = LIMIT) -> None:
        self.path = path
        self.limit = limit
        self._names: collections.deque[str] = collections.deque()
        self._numbers = itertools.count()

    def load(self) -> None:
        """Make the directory; keep the empty directories a previous daemon left."""
        self.path.mkdir(mode=0o700, exist_ok=True)
        spread_subdirs(self.path)
        last = -1
        for entry in os.scandir(self.path):
            spare = entry.name.isdigit() and entry.is_dir(follow_symlinks=False)
            if spare and all(n.startswith(BLANK) for n in os.listdir(entry.path)):
                self._names.append(entry.name)
                last = max(last, int(entry.name))
            else:
                _remove(Path(entry.path))
        self._numbers = itertools.count(last + 1)

    def __len__(self) -> int:
        return len(self._names)

    @property
    def short(self) -> bool:
        return len(self._names) < self.limit

    def take(self, directory: Path) -> bool:
        """Rename a spare to `directory`; False if none is left (or none could move)."""
        while self._names:
            name = self._names.pop()  # the most recent: its blocks are still cached
            try:
                os.rename(self.path / name, directory)
            except FileNotFoundError:
                continue  # someone removed it: the next one
            except OSError:  # `procs/` on another file system, say: make one instead
                self._names.append(name)
                return False
            return True
        return False

    def make(self, count: int) -> None:
        """Make up to `count` new spares (fewer if the pool fills)."""
        for _ in range(min(count, self.limit - len(self._names))):
            name = str(next(self._numbers))
            os.mkdir(self.path / name, 0o700)
            for blank in BLANKS:
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
                os.close(os.open(self.path / name / (BLANK + blank), flags, 0o600))
            self._names.append(name)

    def recycle(self, directory: Path) -> bool:
        """Move `directory` here, empty it and keep it; False if the pool is full
        (the caller removes it). Nothing in it may be in use any more."""
        if not self.short:
            return False
        name = str(next(self._numbers))
        try:
            os.rename(directory, self.path / name)
        except FileNotFoundError:
            return True  # already gone: nothing to do
        except OSError:
            return False  # on another file system, say: the caller removes it
        empty(self.path / name, keep=True)
        self._names.append(name)
        return True


def empty(directory: Path, keep: bool = False) -> None:
    """Remove what `directory` holds (a system call per file; subdirectories too);
    with `keep`, its files that have blanks are emptied and become blanks again."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return
    try:
        names = set(os.listdir(fd))
        for name in names:
            if keep and (name.startswith(BLANK) or (name in BLANKS and _blank(fd, name, names))):
                continue
            try:
                os.unlink(name, dir_fd=fd)
            except IsADirectoryError:
                shutil.rmtree(directory / name, ignore_errors=True)  # not ours; litter too
            except FileNotFoundError:
                pass
    finally:
        os.close(fd)


def _blank(fd: int, name: str, names: set[str]) -> bool:
    """Empty the file `name` in the directory `fd` and make it its blank; False if
    it is no regular file of ours (then it is removed)."""
    try:
        file = os.open(name, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        os.close(file)
        os.replace(name, BLANK + name, src_dir_fd=fd, dst_dir_fd=fd)
    except OSError:
        return False
    # Two names of one file (a crash between a start's link and unlink): rename
    # left both; the blank stays.
    return BLANK + name not in names


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
