"""Removing the directories of reported processes, off the event loop, in quiet moments.

Once the server has acknowledged a process's final event, its directory is only
litter. Removing it costs a handful of system calls per run (~150 us of CPU), and
they contend with starting programs for the CPU and for the lock of the directory
that holds every process directory. So a background thread at low priority does
it, and waits for a quiet moment: `QUIET` seconds without a start, or a directory
has waited `MAX_WAIT` seconds. Measured on P2's bursts of 500 starts, removing
while starting cost a tenth of the throughput.

A directory not yet removed when the agent dies is found by recovery, reported
again (the server ignores what it already has) and removed then.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import shutil
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

# Nice value of the removing thread: below the event loop, above nothing else.
_NICE = 10
# Removal waits until no process has started for QUIET seconds, but a directory
# never waits longer than MAX_WAIT (under steady load there is no quiet moment).
QUIET = 0.2
MAX_WAIT = 10.0


def remove_dir(directory: Path) -> None:
    """Remove a process directory: `spec` first, then whatever else it holds, then itself.

    `spec` goes first, so a directory cut short by a crash has no spec and
    recovery simply removes it. Names are resolved against the directory's
    descriptor and listed once: a system call per file, no failed lookups.
    """
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink("spec", dir_fd=fd)
        for name in os.listdir(fd):
            try:
                os.unlink(name, dir_fd=fd)
            except IsADirectoryError:
                shutil.rmtree(directory / name, ignore_errors=True)  # not ours; litter too
            except FileNotFoundError:
                pass
    finally:
        os.close(fd)
    with contextlib.suppress(FileNotFoundError):
        os.rmdir(directory)


class Remover:
    """A thread removing the directories it is given, in order, when starts pause."""

    def __init__(self, quiet: float = QUIET, max_wait: float = MAX_WAIT) -> None:
        self._quiet = quiet
        self._max_wait = max_wait
        self._last_start = 0.0  # time.monotonic() of the latest start
        self._closing = threading.Event()
        self._queue: queue.SimpleQueue[tuple[float, Path] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="remover", daemon=True)
        self._thread.start()

    def started(self) -> None:
        """Note that programs are being started: removal waits for a pause."""
        self._last_start = time.monotonic()

    def remove(self, directory: Path) -> None:
        self._queue.put((time.monotonic(), directory))

    def close(self, timeout: float = 10.0) -> None:
        """Finish what was queued, without waiting for quiet (up to `timeout` s), then stop."""
        self._closing.set()
        self._queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), _NICE)
        while (item := self._queue.get()) is not None:
            queued, directory = item
            self._wait_for_quiet(queued + self._max_wait)
            try:
                remove_dir(directory)
            except Exception:
                log.exception("cannot remove %s", directory)

    def _wait_for_quiet(self, deadline: float) -> None:
        while not self._closing.is_set():
            wait = min(self._last_start + self._quiet, deadline) - time.monotonic()
            if wait <= 0:
                return
            self._closing.wait(wait)
