"""Timers: when each unfinished run next needs the engine, and the loop that fires them.

A timer is a time, a run id and a kind (`TimerKind`). The loop takes timers off
as they come due and the engine decides what each means for the run as it is then
(`Engine.fire`); a run that has moved on ignores its stale timers, so none is ever
cancelled. The loop commits after each slice of timers and keeps the watermark
current: how far the server got, from which catch-up starts after downtime.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import heapq
from collections.abc import Mapping
from typing import Protocol

from apsis_common.errors import Unavailable

# The watermark is kept among the schedule cursors under this key.
WATERMARK = ("", "watermark")
WATERMARK_PERIOD = 5.0
# How soon to try the store again after a write failed (disk full, read-only).
STORE_RETRY = 1.0
# Timers fired between two commits: a burst of due runs reaches agents in slices.
FIRE_CHUNK = 100


class TimerKind(enum.StrEnum):
    """What a timer is for; the engine decides what it means when it fires."""

    DUE = "due"
    STOP_TIME = "stop-time"
    WAITING_LIMIT = "waiting-limit"
    CONDITION_LIMIT = "condition-limit"  # a dependency's max_wait
    NO_OP = "no-op"


class Target(Protocol):
    """What the timer loop does: fire timers, commit, and record the watermark."""

    def clock(self) -> float: ...

    def fire(self, run_id: str, kind: TimerKind) -> None: ...

    def commit(self) -> None: ...

    def move_cursors(self, cursors: Mapping[tuple[str, str], float]) -> None: ...


class Timers:
    """Owns the pending timers, earliest first."""

    def __init__(self, target: Target) -> None:
        self._target = target
        self._heap: list[tuple[float, int, str, TimerKind]] = []
        self._seq = 0
        self._wake = asyncio.Event()

    def add(self, t: float, run_id: str, kind: TimerKind) -> None:
        """Fire `kind` for the run at time `t`."""
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, run_id, kind))
        if self._heap[0][1] == self._seq:
            self._wake.set()

    async def run(self) -> None:
        """Fire timers as they come due, forever; keep the watermark current."""
        engine = self._target
        next_mark = 0.0
        while True:
            now = engine.clock()
            if now >= next_mark:
                # How far the server got: catch-up after downtime starts here.
                engine.move_cursors({WATERMARK: now})
                next_mark = now + WATERMARK_PERIOD
            fired = 0
            while self._heap and self._heap[0][0] <= now and fired < FIRE_CHUNK:
                _, _, run_id, kind = heapq.heappop(self._heap)
                engine.fire(run_id, kind)
                fired += 1
            try:
                engine.commit()
            except Unavailable:
                await asyncio.sleep(STORE_RETRY)
                continue
            if fired == FIRE_CHUNK:
                await asyncio.sleep(0)  # the first starts go out while the rest are fired
                continue
            delay = self._heap[0][0] - engine.clock() if self._heap else WATERMARK_PERIOD
            delay = min(delay, next_mark - engine.clock())
            self._wake.clear()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), min(delay, 60.0))
