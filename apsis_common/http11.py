"""A small HTTP/1.1 client: the server's requests to agents, an agent's webhook.

Keep-alive connections over verified TLS (asyncio streams), bodies delimited by
Content-Length (what uvicorn and starlette answer with; chunked answers are read
too). Nothing else: no redirects, cookies, proxies or compression, none of which
either uses. httpx did the same with ~4x the CPU per request: a quarter of the
server's time under load, where start batches are small and frequent, and a
sixth of the agent's, posting its events.

A request that fails on a reused connection before any byte of an answer (the
agent closed an idle connection) is sent again on a new one; every request to an
agent may be repeated (a start is keyed by its proc id). An idle connection the
agent has closed is dropped before anything is written to it, so a request that
could not reach the agent on any connection fails with an error `never_sent` says
so of: nothing of it left this process (the dispatcher relies on that,
agents/dispatch.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

# Longest answer head (status line and headers) accepted.
_HEAD_LIMIT = 64 * 1024

_Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


class _Stale(Exception):
    """A reused connection was closed before it answered."""


_NEVER_SENT = "apsis: nothing of the request was written to any connection"


def never_sent(exc: BaseException | None) -> bool:
    """Whether `exc` (or what caused it) is a request that never left: no connection
    could be opened and nothing was written to any, so the agent cannot have had it."""
    while exc is not None:
        if _NEVER_SENT in getattr(exc, "__notes__", ()):
            return True
        exc = exc.__cause__
    return False


class Http11Client:
    """Requests to one origin over at most `max_connections` kept-alive connections."""

    def __init__(
        self,
        base_url: str,
        context: ssl.SSLContext,
        timeout: float = 30.0,
        max_connections: int = 8,
    ) -> None:
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or url.hostname is None:
            raise ValueError(f"expected an https:// URL, got {base_url!r}")
        self._host = url.hostname
        self._port = url.port or (443 if url.scheme == "https" else 80)
        self._authority = url.netloc
        # Plain HTTP only where a URL says so (an agent's webhook may).
        self._context = context if url.scheme == "https" else None
        self._timeout = timeout
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: list[_Conn] = []
        self._closed = False

    async def close(self) -> None:
        self._closed = True
        while self._idle:
            _close(self._idle.pop())

    async def request(
        self, method: str, target: str, headers: dict[str, str], body: bytes = b""
    ) -> Answer:
        """Send a request and read its answer; OSError, EOFError, TimeoutError or
        ValueError if that fails, RuntimeError once closed."""
        if self._closed:
            raise RuntimeError("the client is closed")
        head = [f"{method} {target} HTTP/1.1", f"host: {self._authority}"]
        head += [f"{name}: {value}" for name, value in headers.items()]
        head.append(f"content-length: {len(body)}")
        data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
        async with self._slots, asyncio.timeout(self._timeout):
            written = False
            while self._idle:
                conn = self._idle.pop()
                if conn[0].at_eof() or conn[1].is_closing():
                    _close(conn)  # closed by the agent while idle: nothing written
                    continue
                written = True
                with contextlib.suppress(_Stale):
                    return await self._exchange(conn, method, data, reused=True)
            try:
                conn = await asyncio.open_connection(
                    self._host,
                    self._port,
                    ssl=self._context,
                    server_hostname=self._host if self._context is not None else None,
                    limit=_HEAD_LIMIT,
                )
            except OSError as exc:
                if not written:
                    exc.add_note(_NEVER_SENT)
                raise
            return await self._exchange(conn, method, data, reused=False)

    async def _exchange(self, conn: _Conn, method: str, data: bytes, reused: bool) -> Answer:
        reader, writer = conn
        keep = False
        try:
            try:
                writer.write(data)
                await writer.drain()
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError) as exc:
                if reused and not getattr(exc, "partial", b""):
                    raise _Stale from exc
                raise
            status, headers = _parse_head(head)
            body, keep = await _read_body(reader, method, status, headers)
            return Answer(status, headers, body)
        finally:
            if keep and not self._closed:
                self._idle.append(conn)
            else:
                _close(conn)


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code = rest.partition(" ")[0]
    if not version.startswith("HTTP/1.") or not code.isdigit():
        raise ValueError(f"not an HTTP/1.1 answer: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return int(code), headers


async def _read_body(
    reader: asyncio.StreamReader, method: str, status: int, headers: dict[str, str]
) -> tuple[bytes, bool]:
    """The answer's body, and whether the connection may be used again."""
    keep = headers.get("connection", "").lower() != "close"
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        return b"", keep
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return await _read_chunks(reader), keep
    length = headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise ValueError(f"bad content-length {length!r}")
        return await reader.readexactly(int(length)), keep
    return await reader.read(), False  # delimited by the end of the connection


async def _read_chunks(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":
                pass  # trailers
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)


def _close(conn: _Conn) -> None:
    conn[1].close()
