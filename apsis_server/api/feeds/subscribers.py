"""Subscriber queues: what the feeds hold for each client, bounded and never blocking."""

from __future__ import annotations

import asyncio
import enum
from collections import deque

from apsis_server.api.views import encode
from apsis_server.store.base import OutputName


class Mark(enum.Enum):
    """Queue entries that are not messages."""

    OUTPUT = "output"  # the run has more output than was sent
    END = "end"  # the feed is over: close normally


def dumps(message: object) -> str:
    """A feed message (`messages.py`) as compact JSON text, encoded as the REST API's
    answers are (`views.encode`): serialised once, queued for every subscriber."""
    return encode(message).decode()


class Subscriber:
    """One client's bounded queue of serialised messages."""

    def __init__(self, max_messages: int, max_bytes: int) -> None:
        self._items: deque[str | Mark] = deque()
        self._bytes = 0
        self._max_messages = max_messages
        self._max_bytes = max_bytes
        self._ready = asyncio.Event()
        self.too_slow = asyncio.Event()
        self.reason = ""

    def push(self, item: str | Mark) -> None:
        """Queue a message; on overflow drop the queue and mark the subscriber. Never blocks."""
        if self.too_slow.is_set():
            return
        size = len(item) if isinstance(item, str) else 0
        # One message, however big (a snapshot), always fits in an empty queue.
        full = len(self._items) >= self._max_messages or self._bytes + size > self._max_bytes
        if full and self._items:
            self.drop(f"too slow: {len(self._items)} messages ({self._bytes} bytes) queued")
            return
        self._items.append(item)
        self._bytes += size
        self._ready.set()

    def drop(self, reason: str) -> None:
        """Give up on this subscriber: its handler closes the socket with `reason`."""
        self._items.clear()
        self._bytes = 0
        self.reason = reason
        self.too_slow.set()

    async def get(self) -> str | Mark:
        """The next queued item, waiting for one."""
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        item = self._items.popleft()
        if isinstance(item, str):
            self._bytes -= len(item)
        return item


class RunSubscriber(Subscriber):
    """A subscriber to one run: also where its output stands."""

    def __init__(
        self, run_id: str, max_messages: int, max_bytes: int, name: OutputName = OutputName.MERGED
    ) -> None:
        super().__init__(max_messages, max_bytes)
        self.run_id = run_id
        self.name = name  # the output it follows
        self.sent = 0  # output offset sent so far
        self.end = 0  # output length known to be in the store
        self.output_marked = False

    def more_output(self, end: int) -> None:
        """The store holds output up to `end`; queue one marker for it, not the bytes."""
        self.end = max(self.end, end)
        if not self.output_marked and self.end > self.sent:
            self.output_marked = True
            self.push(Mark.OUTPUT)
