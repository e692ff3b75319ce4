"""Answers written in one piece: `Joined` joins the writes of one turn of the loop."""

from __future__ import annotations

import asyncio
import socket

from apsis_common.serving import Joined
from tests.harness import run_async


class _Recorder(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport


async def _pair() -> tuple[asyncio.Transport, socket.socket, list[bytes]]:
    """A real socket transport whose writes are recorded, and the peer's socket."""
    ours, theirs = socket.socketpair()
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_connection(_Recorder, sock=ours)
    assert isinstance(transport, asyncio.Transport)
    sent: list[bytes] = []
    write = transport.write

    def recording(data: bytes | bytearray | memoryview) -> None:
        sent.append(bytes(data))
        write(data)

    transport.write = recording  # type: ignore[method-assign]
    theirs.setblocking(False)
    return transport, theirs, sent


async def _read(peer: socket.socket, size: int) -> bytes:
    loop = asyncio.get_running_loop()
    data = b""
    while len(data) < size:
        data += await loop.sock_recv(peer, size - len(data))
    return data


def test_the_writes_of_one_turn_go_out_as_one() -> None:
    async def main() -> None:
        transport, peer, sent = await _pair()
        joined = Joined(transport)
        joined.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        joined.write(b"")
        joined.write(memoryview(b"ok"))
        assert sent == [] and joined.get_write_buffer_size() == 40
        await asyncio.sleep(0)
        assert sent == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"]
        joined.write(b"next")
        await asyncio.sleep(0)
        assert sent[1:] == [b"next"], "a later turn is a write of its own"
        assert await _read(peer, 44) == b"".join(sent)
        joined.write(b"last words")
        joined.close()  # what is pending goes before the connection closes
        assert sent[2:] == [b"last words"] and joined.is_closing()
        assert await _read(peer, 10) == b"last words"
        peer.close()

    run_async(main)


def test_an_abort_drops_what_is_pending() -> None:
    async def main() -> None:
        transport, peer, sent = await _pair()
        joined = Joined(transport)
        joined.write(b"never")
        joined.abort()
        await asyncio.sleep(0)
        assert sent == [] and transport.is_closing()
        peer.close()

    run_async(main)


def test_a_large_body_goes_at_once() -> None:
    """Pending bytes past 64 KiB go without waiting for the end of the turn, so a
    body written in one turn does not pile up in memory first."""

    async def main() -> None:
        transport, peer, sent = await _pair()
        joined = Joined(transport)
        joined.write(b"head\r\n\r\n")
        joined.write(b"x" * 70_000)
        assert [len(s) for s in sent] == [70_008]
        joined.write(b"tail")
        await asyncio.sleep(0)
        assert sent[1:] == [b"tail"]
        joined.close()
        peer.close()

    run_async(main)
