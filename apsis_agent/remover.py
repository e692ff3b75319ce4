"""Removing the directories of reported processes, off the event loop.

Once the server has acknowledged a process's final event, its directory is only
litter. Removing it costs a handful of system calls per run, which at hundreds of
runs a second is real work; a background thread at low priority does it, so
starts and events never wait behind it. A directory not yet removed when the
agent dies is found by recovery, reported again (the server ignores what it
already has) and removed then.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import shutil
import threading
from pathlib import Path

log = logging.getLogger(__name__)

# What a process directory holds; `spec` goes first, so a directory cut short by a
# crash has no spec and recovery simply removes it.
_FILES = ("spec", "pid", "exit", "failed", "stop", "output")
# Nice value of the removing thread: below the event loop, above nothing else.
_NICE = 10


def remove_dir(directory: Path) -> None:
    """Remove a process directory: its known files, then itself (anything else too)."""
    for name in _FILES:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            os.unlink(directory / name)
    try:
        os.rmdir(directory)
    except FileNotFoundError:
        pass
    except OSError:
        shutil.rmtree(directory, ignore_errors=True)  # temp files left by a crash


class Remover:
    """A thread removing the directories it is given, in order."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Path | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="remover", daemon=True)
        self._thread.start()

    def remove(self, directory: Path) -> None:
        self._queue.put(directory)

    def close(self, timeout: float = 10.0) -> None:
        """Finish what was queued (up to `timeout` seconds), then stop."""
        self._queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), _NICE)
        while (directory := self._queue.get()) is not None:
            try:
                remove_dir(directory)
            except Exception:
                log.exception("cannot remove %s", directory)
