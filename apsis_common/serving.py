"""uvicorn's HTTP/1.1 protocol with each answer written in one piece.

uvicorn's h11 protocol writes an answer's status line and headers, then its body,
with a system call each (over TLS, a record each). On loopback a `send` costs
the sender the receiver's TCP work too: in a burst of runs, the server spent a
quarter of its CPU in them. Here the writes made in one turn of the event loop
are joined and written once, at the end of that turn: an answer made at once
(nearly all of ours) goes out as one segment, a streamed one chunk by chunk as
before.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

# Pending bytes written at once, without waiting for the end of the turn.
_AT_ONCE = 64 * 1024
# How long the server and the agents keep an idle connection open (uvicorn's default
# is 5 s). A peer's next request then needs no TLS handshake: agents' heartbeats and
# event batches reuse theirs, and so does the first start batch of a burst after a
# quiet spell — a handshake takes a few turns of the server's loop, each one long
# while it fires the burst's runs (140 ms before 2,000 due runs reached the agent).
KEEP_ALIVE = 60


class Joined(asyncio.Transport):
    """A transport that joins the writes made in one turn of the loop."""

    def __init__(self, transport: asyncio.Transport) -> None:
        super().__init__()
        self._transport = transport
        self._pending: list[bytes] = []
        self._size = 0  # bytes pending
        self._loop = asyncio.get_running_loop()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(bytes(data))
        self._size += len(data)
        if self._size >= _AT_ONCE:  # a large body is not held back (nor piled up)
            self._flush()

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def _flush(self) -> None:
        if not self._pending:
            return
        data = b"".join(self._pending) if len(self._pending) > 1 else self._pending[0]
        self._pending.clear()
        self._size = 0
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending.clear()
        self._size = 0
        self._transport.abort()

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + self._size

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()


class H11(H11Protocol):
    """uvicorn's h11 protocol on a `Joined` transport (`uvicorn.Config(http=H11)`)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        super().connection_made(Joined(transport))
