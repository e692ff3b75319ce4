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

With a pool of spare directories (spares.py), an emptied directory becomes a
spare while the pool is short, and quiet moments are used to fill the pool.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from pathlib import Path

from apsis_agent.spares import Spares, empty

log = logging.getLogger(__name__)

# Nice value of the removing thread: below the event loop, above nothing else.
_NICE = 10
# Removal waits until no process has started for QUIET seconds, but a directory
# never waits longer than MAX_WAIT (under steady load there is no quiet moment).
QUIET = 0.2
MAX_WAIT = 10.0
# Spares made at a time while starts pause, and the pause after a failure to make them.
_CHUNK = 64
_BACK_OFF = 60.0


def remove_dir(directory: Path) -> None:
    """Remove a process directory: `spec` first, then whatever else it holds, then itself.

    `spec` goes first, so a directory cut short by a crash has no spec and
    recovery simply removes it.
    """
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        os.unlink(directory / "spec")
    empty(directory)
    with contextlib.suppress(FileNotFoundError):
        os.rmdir(directory)


class Remover:
    """A thread removing (or recycling) the directories it is given, in order, and
    filling the pool of spares, when starts pause."""

    def __init__(
        self, quiet: float = QUIET, max_wait: float = MAX_WAIT, spares: Spares | None = None
    ) -> None:
        self._quiet = quiet
        self._max_wait = max_wait
        self._spares = spares
        self._spares_after = 0.0  # time.monotonic() before which no spare is made
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
        while True:
            try:
                item = self._queue.get(timeout=self._quiet if self._to_fill() else None)
            except queue.Empty:
                self._fill()
                continue
            if item is None:
                return
            queued, directory = item
            self._wait_for_quiet(queued + self._max_wait)
            try:
                if self._spares is None or not self._spares.recycle(directory):
                    remove_dir(directory)
            except Exception:
                log.exception("cannot remove %s", directory)

    def _to_fill(self) -> bool:
        spares = self._spares
        return spares is not None and spares.short and time.monotonic() >= self._spares_after

    def _fill(self) -> None:
        """Make spares while no start comes and nothing waits for removal."""
        assert self._spares is not None
        while self._to_fill() and self._queue.empty() and not self._closing.is_set():
            if time.monotonic() - self._last_start < self._quiet:
                return
            try:
                self._spares.make(_CHUNK)
            except OSError as exc:
                log.warning("cannot make spare directories (again in %g s): %s", _BACK_OFF, exc)
                self._spares_after = time.monotonic() + _BACK_OFF

    def _wait_for_quiet(self, deadline: float) -> None:
        while not self._closing.is_set():
            wait = min(self._last_start + self._quiet, deadline) - time.monotonic()
            if wait <= 0:
                return
            self._closing.wait(wait)
