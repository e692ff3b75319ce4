"""The gate in front of the HTTP API: which hosts, origins, content types and body
sizes reach a handler, and whether the server may listen where it is told to.

Theory of operation
-------------------
The API runs shell commands, so a request a browser sends on another site's behalf
must never act and never read. Any page may make the browser send "simple"
requests to any address without asking first (GET, and POST with a form or
`text/plain` body: an HTML form, or `fetch` in `no-cors` mode), and may open a
websocket anywhere. Before any handler runs, the gate refuses:

- a `Host` that is not a name of this server → 400. Without this, DNS rebinding
  (a page at attacker.example whose name is made to resolve to 127.0.0.1) is
  same-origin with the API and reads everything;
- under `/api/v1` and `/metrics`, an `Origin` other than the server's own (the
  request's `Host`, or `public_url`) or one in `api.origins` → 403, and a websocket
  is closed before it is accepted;
- under `/api/v1`, a body in a request that may change something (not GET, HEAD or
  OPTIONS) whose `Content-Type` is not `application/json` → 415: a cross-site page
  cannot send JSON without a CORS preflight, which the API does not grant;
- a body over `api.max_body` → 413, before anything parses it.

The agents' webhook (`/agent/...`) is outside the gate: agents are not browsers,
and every webhook request is HMAC-signed, with a size limit of its own.
`/api/v1/alive` skips the `Host` check so a load balancer may probe by address.

A server that listens on a non-loopback address without API tokens would let
anyone who reaches it run commands: `exposure` refuses that unless the config opts
out explicitly (`api: {allow_unauthenticated: true}`).
"""

from __future__ import annotations

import ipaddress
import json
import socket
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from apsis_common.bodies import read_body, replay

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
WILDCARD_BINDS = frozenset({"0.0.0.0", "::", ""})
API_PREFIX = "/api/v1/"
CHECKED_PATHS = ("/api/v1", "/metrics")
NO_HOST_CHECK = frozenset({"/api/v1/alive"})
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def is_loopback(host: str) -> bool:
    """Whether a host name or address is this machine's loopback."""
    name = host.strip("[]").lower().rstrip(".")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def allowed_hosts(
    bind_host: str, public_url: str | None, extra: tuple[str, ...]
) -> frozenset[str] | None:
    """The host names the server answers to (loopback ones always), or None for any:
    its bind address, the host of `public_url`, the machine's names when bound to
    every address, and `extra` (`api.hosts`; "*" for any)."""
    if "*" in extra:
        return None
    names = {"localhost", *extra}
    if bind_host in WILDCARD_BINDS:
        names |= {socket.gethostname(), socket.getfqdn()}
    else:
        names.add(bind_host)
    if public_url:
        names.add(urlsplit(public_url).hostname or "")
    return frozenset(_name(n) for n in names if n)


def allowed_origins(public_url: str | None, extra: tuple[str, ...]) -> frozenset[str]:
    """Origins besides a request's own whose pages may call the API: `public_url`'s
    and `extra` (`api.origins`)."""
    origins = {*extra, *([public_url] if public_url else [])}
    return frozenset(o for o in (_origin(o) for o in origins) if o)


def exposure(
    host: str, port: int, tokens: bool, allow_unauthenticated: bool
) -> tuple[str | None, str | None]:
    """(why the server must not start listening on `host`, a warning to log loudly)."""
    if is_loopback(host) or tokens:
        return None, None
    where = f"{host or '*'}:{port}"
    if not allow_unauthenticated:
        return (
            f"refusing to serve the API on {where} without API tokens: anyone who can "
            "reach it could run commands as this user. Configure api.tokens (see "
            "docs/security.md), bind to 127.0.0.1, or set "
            "api: {allow_unauthenticated: true} to accept that risk",
            None,
        )
    return None, (
        f"THE API ON {where} IS OPEN: api.allow_unauthenticated is set and no API "
        "tokens are configured, so anyone who can reach this address can run commands "
        "as this user"
    )


def _name(host: str) -> str:
    return host.strip("[]").lower().rstrip(".")


def _origin(text: str) -> str | None:
    """`scheme://host[:port]` in one spelling (lower case, no default port), or None."""
    try:
        parts = urlsplit(text.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    if scheme not in ("http", "https") or not parts.hostname:
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    if port is not None and port != _DEFAULT_PORTS[scheme]:
        host += f":{port}"
    return f"{scheme}://{host.rstrip('.')}"


def _header(scope: Scope, wanted: bytes) -> str | None:
    for name, value in scope.get("headers", ()):
        if name.lower() == wanted:
            return bytes(value).decode("latin-1")
    return None


async def refuse(scope: Scope, send: Send, status: int, message: str) -> None:
    """Answer `{"error": message}` with `status`; a websocket is closed before accept
    (the server then answers its upgrade with 403)."""
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 4000 + status, "reason": message[:120]})
        return
    body = json.dumps({"error": message}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="apsis"'))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Gate:
    """ASGI middleware enforcing the rules of this module's header."""

    def __init__(
        self,
        app: ASGIApp,
        hosts: frozenset[str] | None,
        origins: frozenset[str] = frozenset(),
        max_body: int = 1024 * 1024,
    ) -> None:
        self.app = app
        self.hosts = hosts
        self.origins = origins
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or scope["path"].startswith("/agent/"):
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        why = self._host_refused(scope, path) or self._origin_refused(scope, path)
        if why is not None:
            await refuse(scope, send, *why)
            return
        if scope["type"] == "http" and path.startswith(API_PREFIX):
            body = await self._body(scope, receive, send)
            if body is None:
                return  # refused
            receive = replay(body, receive)
        await self.app(scope, receive, send)

    def _host_refused(self, scope: Scope, path: str) -> tuple[int, str] | None:
        host = _header(scope, b"host")
        if self.hosts is None or host is None or path in NO_HOST_CHECK:
            return None  # no browser sends a request without a Host
        try:
            name = urlsplit("//" + host).hostname
        except ValueError:
            name = None
        if name is not None and (is_loopback(name) or _name(name) in self.hosts):
            return None
        return 400, (
            f"Host {host!r} is not a name of this server (DNS rebinding?); "
            "add it to api.hosts in the server's config if it is one"
        )

    def _origin_refused(self, scope: Scope, path: str) -> tuple[int, str] | None:
        if not (path in CHECKED_PATHS or path.startswith(CHECKED_PATHS[0] + "/")):
            return None
        origin = _header(scope, b"origin")
        if origin is None:
            return None  # not a browser, or a same-origin GET
        given = _origin(origin)
        own = _origin(f"{scope.get('scheme', 'http')}://{_header(scope, b'host') or ''}")
        if given is not None and (given == own or given in self.origins):
            return None
        return 403, (
            f"cross-origin request from {origin!r} refused; "
            "list the origin in api.origins if its pages may use this API"
        )

    async def _body(self, scope: Scope, receive: Receive, send: Send) -> bytes | None:
        """The whole request body, or None once refused (413, 415)."""
        declared = _header(scope, b"content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > self.max_body:
            await refuse(scope, send, 413, self._too_large())
            return None
        body = await read_body(receive, self.max_body)
        if body is None:
            await refuse(scope, send, 413, self._too_large())
            return None
        kind = (_header(scope, b"content-type") or "").partition(";")[0].strip().lower()
        changing = scope.get("method", "GET") not in SAFE_METHODS
        if changing and (body or kind) and kind != "application/json":
            await refuse(
                scope,
                send,
                415,
                f"the API takes application/json bodies, not {kind or 'untyped ones'}",
            )
            return None
        return body

    def _too_large(self) -> str:
        return f"request body over {self.max_body} bytes (api.max_body)"
