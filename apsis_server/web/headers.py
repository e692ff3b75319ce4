"""The security headers on every HTTP answer: what a page of ours may load, run and be framed by."""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Everything the UI loads is its own: ES modules, one stylesheet, the favicon, the
# API and its websockets. No inline script or style attribute, no eval, no plugins,
# no <base> to redirect relative URLs, no framing (clickjacking).
POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)

HEADERS = (
    ("content-security-policy", POLICY),
    # frame-ancestors' older twin, for browsers that predate it.
    ("x-frame-options", "DENY"),
    # A text/plain answer (program output) is never run as script or style.
    ("x-content-type-options", "nosniff"),
    # Other sites learn nothing, not even which job page linked to them. Not
    # no-referrer: under it a form POST to ourselves carries `Origin: null` (Fetch
    # standard; seen in Chromium), which an Origin check must refuse.
    ("referrer-policy", "same-origin"),
)


class SecurityHeaders:
    """Pure ASGI middleware: adds `HEADERS` to each HTTP answer, keeping any a handler set."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in HEADERS:
                    if name not in headers:
                        headers.append(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)
