"""The endpoint agents report to: `POST /agent/v1/events`, signed, msgpack."""

from __future__ import annotations

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from apsis_common import codec
from apsis_common import protocol as p
from apsis_common.auth import Verifier
from apsis_common.errors import AuthError, ProtocolError, Unavailable
from apsis_server.agents.facts import Facts
from apsis_server.agents.registry import Registry

PATH = "/agent/v1/events"


async def read_limited(request: Request, limit: int) -> bytes | None:
    """The body, or None as soon as it is known to exceed `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


def webhook_route(registry: Registry, facts: Facts, verifier: Verifier) -> Route:
    async def events(request: Request) -> Response:
        try:
            body = await read_limited(request, p.MAX_WEBHOOK_BYTES)
        except ClientDisconnect:
            # The agent went mid-request (a partition, its death): it sends again.
            # Nothing was applied; not a server error with a traceback in the log.
            return Response(status_code=400)
        if body is None:
            return Response("request body too large", status_code=413)
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        try:
            key_id = verifier.verify("POST", target, request.headers, body)
        except AuthError:
            return Response(status_code=401)
        agent_id = registry.agent_for_key(key_id)
        try:
            batch = codec.decode(p.EventBatch, body, request.headers.get("content-type", p.MSGPACK))
        except ProtocolError as exc:
            return Response(str(exc), status_code=400)
        if agent_id is None or batch.agent_id != agent_id:
            return Response(status_code=401)
        registry.heard_from(agent_id, facts.engine.clock(), batch.info)
        try:
            acked = await facts.apply(agent_id, batch)
        except Unavailable as exc:
            # Not durable, so not acknowledged: the agent sends the batch again.
            return Response(str(exc), status_code=503, headers={"retry-after": "1"})
        return Response(codec.encode(p.Ack(acked)), media_type=p.MSGPACK)

    return Route(PATH, events, methods=["POST"])
