"""The agents' webhook when the agent goes mid-request (a partition, its death)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from apsis_server.agents.events import PATH, webhook_route
from tests.harness import run_async


def test_an_agent_gone_mid_request_is_no_server_error() -> None:
    """Nothing is applied (nor even read: no registry or facts needed), and no
    traceback: the agent sends the batch again."""
    route = webhook_route(None, None, None)  # type: ignore[arg-type]
    scope = {
        "type": "http",
        "method": "POST",
        "path": PATH,
        "query_string": b"",
        "headers": [(b"content-length", b"100")],
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def call() -> int:
        response = await route.endpoint(Request(scope, receive))
        return int(response.status_code)

    assert run_async(call) == 400
