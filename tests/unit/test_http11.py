"""The server's HTTP/1.1 client for agents, against a real TLS server on loopback that
answers as scripted: keep-alive, chunked bodies, idle connections closed by the
other side, wrong certificates."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from apsis_common import tls
from apsis_common.http11 import Http11Client
from tests.harness import run_async

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _serve(handler: Handler, ca: tls.CertPair, tmp: Path) -> tuple[asyncio.Server, int]:
    pair = tls.new_cert(ca, ["127.0.0.1"], "agent")
    (tmp / "c.pem").write_text(pair.cert_pem)
    (tmp / "k.pem").write_text(pair.key_pem)
    context = tls.server_context(tmp / "c.pem", tmp / "k.pem")
    server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=context)
    return server, server.sockets[0].getsockname()[1]


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return await reader.readexactly(length)


def test_keep_alive_chunked_and_a_connection_closed_while_idle(tmp_path: Path) -> None:
    ca = tls.new_ca()
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        body = await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        body = await _read_request(reader)
        chunks = b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n"
        writer.write(b"HTTP/1.1 201 Created\r\ntransfer-encoding: chunked\r\n\r\n" + chunks)
        await writer.drain()
        writer.close()  # an idle keep-alive connection, closed by the agent

    async def scenario() -> None:
        server, port = await _serve(handler, ca, tmp_path)
        client = Http11Client(f"https://127.0.0.1:{port}", tls.client_context(ca.cert_pem))
        first = await client.request("POST", "/procs", {"x-a": "1"}, b"hello")
        assert (first.status, first.body) == (200, b"hello")
        second = await client.request("POST", "/procs", {}, b"again")
        assert (second.status, second.body, second.headers["transfer-encoding"]) == (
            201,
            b"abcde",
            "chunked",
        )
        await asyncio.sleep(0.1)
        third = await client.request("GET", "/agent", {}, b"!")  # retried on a new connection
        assert third.body == b"!"
        assert connections == 2
        await client.close()
        with pytest.raises(RuntimeError):
            await client.request("GET", "/agent", {})
        server.close()

    run_async(scenario)


def test_a_certificate_from_another_ca_is_refused(tmp_path: Path) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    async def scenario() -> None:
        server, port = await _serve(handler, tls.new_ca(), tmp_path)
        other = tls.client_context(tls.new_ca().cert_pem)
        client = Http11Client(f"https://127.0.0.1:{port}", other, timeout=5)
        with pytest.raises(ssl.SSLCertVerificationError):
            await client.request("GET", "/agent", {})
        server.close()

    run_async(scenario)


def test_an_answer_that_is_not_http_is_an_error(tmp_path: Path) -> None:
    ca = tls.new_ca()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")
        await writer.drain()

    async def scenario() -> None:
        server, port = await _serve(handler, ca, tmp_path)
        client = Http11Client(f"https://127.0.0.1:{port}", tls.client_context(ca.cert_pem))
        with pytest.raises(ValueError, match=r"not an HTTP/1\.1 answer"):
            await client.request("GET", "/agent", {})
        server.close()

    run_async(scenario)
