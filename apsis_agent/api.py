"""The agent's HTTPS API (server → agent): routes, the signature guard, error mapping.

Every request but `GET /health` passes the guard first: the body size is checked
against MAX_REQUEST_BYTES (413) before any signature work, then the HMAC
signature over method, path+query and body (a bare 401 that changes nothing),
then the leader's epoch of a request that changes something (fence.py: 409 for a
deposed leader).
Bodies are msgpack, or JSON when the request says so; answers use the same
encoding (msgpack by default).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from apsis_agent.fence import PARAM, Fence
from apsis_agent.procs import Procs
from apsis_common import codec, protocol
from apsis_common.auth import Verifier
from apsis_common.bodies import read_body, replay
from apsis_common.errors import (
    ApsisError,
    AuthError,
    BadInput,
    Conflict,
    NotFound,
    Unavailable,
)
from apsis_common.protocol import (
    AgentInfo,
    LeaderNotice,
    ProcList,
    ProcSpec,
    SignalRequest,
    StartBatch,
    StartResults,
    StartStatus,
    StopRequest,
)

T = TypeVar("T")

# Error class → HTTP status, most specific first.
_STATUS: tuple[tuple[type[ApsisError], int], ...] = (
    (AuthError, 401),
    (BadInput, 400),
    (NotFound, 404),
    (Conflict, 409),
    (Unavailable, 503),
)
_READ_CHUNK = 256 * 1024
# How long a start batch's answer waits for its programs to start, so that it can
# carry their pids: the server then knows them running without the webhook's
# round trip. A start takes a few ms; in a burst, the rest are told by webhook.
START_WAIT = 0.05


@dataclass(frozen=True)
class Context:
    """What the handlers act on."""

    procs: Procs
    info: Callable[[], AgentInfo]
    drain: Callable[[], None]
    # A new leader's webhook URL: events go there from now on.
    follow: Callable[[str], None]


def _wants_json(request: Request) -> bool:
    content_type = request.headers.get("content-type", "")
    if content_type.startswith(protocol.JSON):
        return True
    accept = request.headers.get("accept", "")
    return protocol.JSON in accept and protocol.MSGPACK not in accept


def _answer(request: Request, message: Any, status: int = 200) -> Response:
    if _wants_json(request):
        return Response(codec.encode_json(message), status, media_type=protocol.JSON)
    return Response(codec.encode(message), status, media_type=protocol.MSGPACK)


def _error(request: Request, exc: Exception) -> Response:
    status = next((code for cls, code in _STATUS if isinstance(exc, cls)), 500)
    if status == 401:
        return Response(status_code=401)
    response = _answer(request, {"error": str(exc)}, status)
    if status == 503:
        response.headers["retry-after"] = "1"
    return response


async def _body(request: Request, cls: type[T]) -> T:
    content_type = request.headers.get("content-type", protocol.MSGPACK)
    return codec.decode(cls, await request.body(), content_type)


def _int_param(request: Request, name: str, default: int) -> int:
    text = request.query_params.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise BadInput(f"{name} must be an integer") from None
    if value < 0:
        raise BadInput(f"{name} must be >= 0")
    return value


class _Handlers:
    """The route handlers, over one agent's context."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._procs = ctx.procs

    async def health(self, request: Request) -> Response:
        return PlainTextResponse("ok")

    async def agent(self, request: Request) -> Response:
        return _answer(request, self._ctx.info())

    async def start_batch(self, request: Request) -> Response:
        batch = await _body(request, StartBatch)
        results = await self._procs.with_facts(self._procs.start(batch.procs), START_WAIT)
        return _answer(request, StartResults(tuple(results)))

    async def start_one(self, request: Request) -> Response:
        spec = await _body(request, ProcSpec)
        result = self._procs.start_one(request.path_params["proc_id"], spec)
        return _answer(request, result, 201 if result.status is StartStatus.ACCEPTED else 200)

    async def list_procs(self, request: Request) -> Response:
        return _answer(request, ProcList(tuple(self._procs.summaries())))

    async def get_proc(self, request: Request) -> Response:
        return _answer(request, self._procs.get(request.path_params["proc_id"]).summary())

    async def output(self, request: Request) -> Response:
        """A byte range of stream `fd`: 1, stdout (with stderr, when merged), or 2,
        a separate stderr (empty when merged)."""
        proc = self._procs.get(request.path_params["proc_id"])
        fd = request.query_params.get("fd") or "1"
        if fd not in ("1", "2"):
            raise BadInput(f"fd must be 1 (stdout) or 2 (stderr), not {fd[:20]!r}")
        size = proc.output_size(int(fd))
        start = min(_int_param(request, "start", 0), size)
        stop = max(start, min(_int_param(request, "stop", size), size))
        return StreamingResponse(
            _read(str(proc.output_path(int(fd))), start, stop),
            media_type="application/octet-stream",
            headers={"x-apsis-output-length": str(size)},
        )

    async def signal(self, request: Request) -> Response:
        body = await _body(request, SignalRequest)
        return _answer(request, self._procs.signal(request.path_params["proc_id"], body.signal))

    async def stop(self, request: Request) -> Response:
        body = await _body(request, StopRequest)
        summary = self._procs.stop(request.path_params["proc_id"], body.signal, body.grace)
        return _answer(request, summary)

    async def delete(self, request: Request) -> Response:
        self._procs.delete(request.path_params["proc_id"])
        return Response(status_code=204)

    async def drain(self, request: Request) -> Response:
        self._ctx.drain()
        return _answer(request, self._ctx.info())

    async def leader(self, request: Request) -> Response:
        notice = await _body(request, LeaderNotice)
        if not notice.webhook_url.startswith(("http://", "https://")):
            raise BadInput("the webhook URL must be http:// or https://")
        self._ctx.follow(notice.webhook_url)
        return _answer(request, self._ctx.info())


async def _on_error(request: Request, exc: Exception) -> Response:
    return _error(request, exc)


def build_app(ctx: Context, verifier: Verifier, fence: Fence) -> ASGIApp:
    """The ASGI application: routes behind the guard."""
    h = _Handlers(ctx)
    app = Starlette(
        routes=[
            Route("/health", h.health, methods=["GET"]),
            Route("/agent", h.agent, methods=["GET"]),
            Route("/procs", h.start_batch, methods=["POST"]),
            Route("/procs", h.list_procs, methods=["GET"]),
            Route("/procs/{proc_id}", h.start_one, methods=["PUT"]),
            Route("/procs/{proc_id}", h.get_proc, methods=["GET"]),
            Route("/procs/{proc_id}", h.delete, methods=["DELETE"]),
            Route("/procs/{proc_id}/output", h.output, methods=["GET"]),
            Route("/procs/{proc_id}/signal", h.signal, methods=["POST"]),
            Route("/procs/{proc_id}/stop", h.stop, methods=["POST"]),
            Route("/drain", h.drain, methods=["POST"]),
            Route("/leader", h.leader, methods=["PUT"]),
        ],
        exception_handlers={ApsisError: _on_error},
    )
    return Guard(app, verifier, fence)


async def _read(path: str, start: int, stop: int) -> AsyncIterator[bytes]:
    """The byte range of an output file, in chunks (the file only grows)."""
    if start >= stop:
        return  # the file may not exist (yet, or at all: a merged stderr)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        while start < stop:
            chunk = os.pread(fd, min(_READ_CHUNK, stop - start), start)
            if not chunk:
                break
            start += len(chunk)
            yield chunk
    finally:
        os.close(fd)


class Guard:
    """ASGI middleware: size limit, signature, then the leader's epoch, before any
    route sees a request."""

    def __init__(self, app: ASGIApp, verifier: Verifier, fence: Fence) -> None:
        self._app = app
        self._verifier = verifier
        self._fence = fence

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # no websockets, no lifespan
        if scope["method"] == "GET" and scope["path"] == "/health":
            await self._app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            declared = int(headers.get("content-length", "0"))
        except ValueError:
            await _bare(send, 400)
            return
        if declared > protocol.MAX_REQUEST_BYTES:
            await _bare(send, 413)
            return
        body = await read_body(receive, protocol.MAX_REQUEST_BYTES)
        if body is None:
            await _bare(send, 413)
            return
        target = scope.get("raw_path") or scope["path"].encode()
        if scope.get("query_string"):
            target += b"?" + scope["query_string"]
        try:
            self._verifier.verify(scope["method"], target.decode("latin-1"), headers, body)
        except AuthError:
            await _bare(send, 401)
            return
        if scope["method"] != "GET":
            epochs = parse_qs(scope.get("query_string", b"").decode("latin-1")).get(PARAM)
            if epochs:
                try:
                    if len(epochs) > 1:
                        raise BadInput(f"{PARAM} given {len(epochs)} times")
                    self._fence.admit(epochs[0])
                except ApsisError as exc:
                    await _error(Request(scope), exc)(scope, receive, send)
                    return
        await self._app(scope, replay(body, receive), send)


async def _bare(send: Send, status: int) -> None:
    await send(
        {"type": "http.response.start", "status": status, "headers": [(b"content-length", b"0")]}
    )
    await send({"type": "http.response.body", "body": b""})
