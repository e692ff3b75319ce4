"""A server that answers TLS but never the websocket upgrade: the CLI gives up in time.

websockets' own handshake timeout left its reader thread blocked in an SSL read
and waited for it forever, so `apsis wait` hung instead of falling back to polling.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from apsis_common import tls
from cli.errors import FeedUnavailable
from cli.feeds import FeedClient


@contextlib.contextmanager
def _tls_server(
    tmp_path: Path, handle: Callable[[ssl.SSLSocket], None]
) -> Iterator[tuple[int, Path]]:
    """A TLS server on loopback calling `handle` with each connection (kept open
    until the end); its port and CA file."""
    ca = tls.new_ca()
    pair = tls.new_cert(ca, ["127.0.0.1"], "127.0.0.1")
    (tmp_path / "ca.pem").write_text(ca.cert_pem)
    (tmp_path / "cert.pem").write_text(pair.cert_pem)
    (tmp_path / "key.pem").write_text(pair.key_pem)
    context = tls.server_context(tmp_path / "cert.pem", tmp_path / "key.pem")
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def serve() -> None:
        with contextlib.suppress(OSError, ssl.SSLError):
            while True:
                conn, _ = listener.accept()
                tls_conn = context.wrap_socket(conn, server_side=True)
                held.append(tls_conn)
                handle(tls_conn)

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield listener.getsockname()[1], tmp_path / "ca.pem"
    finally:
        listener.close()
        for conn in held:
            conn.close()


def _silent_server(tmp_path: Path) -> contextlib.AbstractContextManager[tuple[int, Path]]:
    """Reads the upgrade request and never answers."""

    def read(conn: ssl.SSLSocket) -> None:
        conn.recv(65536)

    return _tls_server(tmp_path, read)


def test_a_feed_that_never_answers_the_upgrade_gives_up(tmp_path: Path) -> None:
    with _silent_server(tmp_path) as (port, ca):
        client = FeedClient(f"https://127.0.0.1:{port}", ca=str(ca), timeout=1.0)
        began = time.monotonic()
        with pytest.raises(FeedUnavailable, match=r"cannot open the feed wss://127\.0\.0\.1"):
            client.open("/api/v1/summary")
        assert time.monotonic() - began < 5


def test_nothing_listening_is_unavailable_at_once(tmp_path: Path) -> None:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    client = FeedClient(f"http://127.0.0.1:{port}", timeout=5.0)
    began = time.monotonic()
    with pytest.raises(FeedUnavailable, match=r"cannot open the feed ws://127\.0\.0\.1"):
        client.open("/api/v1/summary")
    assert time.monotonic() - began < 2


def test_the_environments_proxy_is_still_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        dead_proxy = f"http://127.0.0.1:{free.getsockname()[1]}"
    for name in ("https_proxy", "HTTPS_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("https_proxy", dead_proxy)
    with _silent_server(tmp_path) as (port, ca):
        client = FeedClient(f"https://127.0.0.1:{port}", ca=str(ca), timeout=3.0)
        began = time.monotonic()
        with pytest.raises(FeedUnavailable):
            client.open("/api/v1/summary")
        # Refused by the proxy at once; straight to the server it would wait 4 s.
        assert time.monotonic() - began < 1.5


def _upgrade(conn: ssl.SSLSocket) -> None:
    """Accept the websocket upgrade, then read nothing more."""
    request = conn.recv(65536).decode()
    key = next(
        line.split(":", 1)[1].strip()
        for line in request.split("\r\n")
        if line.lower().startswith("sec-websocket-key:")
    )
    accept = base64.b64encode(hashlib.sha1((key + _WS_GUID).encode()).digest())
    conn.sendall(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
    )


_WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def test_closing_a_feed_the_server_never_answers_is_quick(tmp_path: Path) -> None:
    """Ctrl-C ends `apsis watch` by closing its feed: that must not wait the
    websocket library's 10 s for a server that does not answer the close."""
    with _tls_server(tmp_path, _upgrade) as (port, ca):  # a close is never answered
        ws = FeedClient(f"https://127.0.0.1:{port}", ca=str(ca), timeout=5.0).open(
            "/api/v1/summary"
        )
        began = time.monotonic()
        with ws:  # as the CLI uses it: leaving the block closes it
            pass
        assert time.monotonic() - began < 3
