"""API access: bearer tokens for `/api/v1` and `/metrics`.

Policy
------
With no `api.tokens` in the config the API is open (it binds to 127.0.0.1 by
default). With tokens, every request under `/api/v1` (websockets included) and to
`/metrics` needs `Authorization: Bearer <token>`:

- no token, or one that matches none → 401 `{"error": ...}`;
- a read-only (`ro`) token on anything but GET/HEAD/OPTIONS → 403;
- `/api/v1/alive` stays open, so load balancers and the test harness can probe
  liveness without a secret (it answers nothing but `{"alive": true}`);
- browsers cannot set headers on websockets, so a websocket may give the token in
  its subprotocols instead: `apsis` and `apsis.token.<token as base64url>` (the
  server picks `apsis`). A token never goes in a URL, which logs keep;
- the agent webhook `/agent/v1/events` and the web UI's static files are not
  covered: the webhook has its own HMAC signatures.

Tokens are compared as SHA-256 digests with `hmac.compare_digest`, against every
configured token without stopping early, so timing tells nothing about which
token or how much of one matched.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from apsis_server.api.gate import refuse
from apsis_server.core.fields import (
    FieldError,
    Fields,
    Invalid,
    boolean,
    byte_size,
    choice,
    string,
    strings,
)

log = logging.getLogger(__name__)

# A websocket's subprotocols: the one the server accepts, and the token's carrier.
WS_PROTOCOL = "apsis"
TOKEN_PROTOCOL = "apsis.token."
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
OPEN_PATHS = frozenset({"/api/v1/alive"})
PROTECTED_PREFIX = "/api/v1"
METRICS_PATH = "/metrics"


@dataclass(frozen=True)
class ApiToken:
    """One configured token: its name (for logs), access, and the secret's digest."""

    name: str
    access: str  # "ro" or "rw"
    digest: bytes = field(repr=False)


# Largest request body the API reads (413 past it, before any parsing).
DEFAULT_MAX_BODY = 1024 * 1024


@dataclass(frozen=True)
class ApiSettings:
    """The `api:` section of the config (docs/security.md, "Web UI and API")."""

    tokens: tuple[ApiToken, ...] = ()
    # Host names the server answers to besides its own (see `gate.allowed_hosts`);
    # "*" for any.
    hosts: tuple[str, ...] = ()
    # Other origins whose pages may call the API (CORS is answered for these only).
    origins: tuple[str, ...] = ()
    # Serve an API without tokens on a non-loopback address: anyone who reaches it
    # can run commands as the server's user.
    allow_unauthenticated: bool = False
    max_body: int = DEFAULT_MAX_BODY


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _token(value: Any, path: str, name: str, base: Path) -> ApiToken:
    f = Fields(value, path, "a mapping with token_file and access")
    token_file = base / f.need("token_file", string)
    access = f.take("access", choice("ro", "rw"), "ro")
    f.done()
    try:
        secret = token_file.read_text().strip()
    except OSError as exc:
        raise Invalid(
            [FieldError(f.at("token_file"), f"cannot read {token_file}: {exc.strerror}")]
        ) from None
    if len(secret) < 16:
        raise Invalid([FieldError(f.at("token_file"), f"{token_file}: token under 16 characters")])
    return ApiToken(name, access, digest(secret))


def _origin(value: Any, path: str) -> str:
    text = string(value, path).rstrip("/")
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path:
        raise Invalid([FieldError(path, f"an origin is scheme://host[:port], got {text!r}")])
    return text.lower()


def parse_api(f: Fields, base: Path) -> ApiSettings:
    """`api: {tokens: {NAME: {token_file: PATH, access: ro|rw}}, hosts, origins,
    allow_unauthenticated, max_body}`; reads the token files."""
    raw = f.raw("tokens") or {}
    path = f.at("tokens")
    if not isinstance(raw, dict):
        raise Invalid([FieldError(path, "expected a mapping of token names")])
    tokens = [_token(value, f"{path}.{name}", str(name), base) for name, value in raw.items()]
    hosts = f.take("hosts", strings, ())
    origins = f.take("origins", lambda v, p: tuple(_origin(o, p) for o in strings(v, p)), ())
    allow = f.take("allow_unauthenticated", boolean, False)
    max_body = f.take("max_body", byte_size, DEFAULT_MAX_BODY)
    f.done()
    return ApiSettings(
        tuple(tokens),
        tuple(h.lower().rstrip(".") for h in hosts),
        origins,
        allow,
        max_body,
    )


# -- the middleware -------------------------------------------------------------------


def _protected(path: str) -> bool:
    if path in OPEN_PATHS:
        return False
    return path in (METRICS_PATH, PROTECTED_PREFIX) or path.startswith("/api/v1/")


def _bearer(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name.lower() == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return str(token.strip())
            return None
    for offered in scope.get("subprotocols", ()):
        if str(offered).startswith(TOKEN_PROTOCOL):
            encoded = str(offered)[len(TOKEN_PROTOCOL) :]
            try:
                return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
            except (ValueError, UnicodeDecodeError):
                return ""  # matches no token
    return None


def match(tokens: tuple[ApiToken, ...], given: str) -> ApiToken | None:
    """The token `given` is, comparing against every token in constant time."""
    given_digest = digest(given)
    found = None
    for token in tokens:
        if hmac.compare_digest(token.digest, given_digest):
            found = token
    return found


class TokenGuard:
    """ASGI middleware enforcing the token policy of this module's header."""

    def __init__(self, app: ASGIApp, tokens: tuple[ApiToken, ...]) -> None:
        self.app = app
        self.tokens = tokens

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.tokens or scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if not _protected(scope["path"]):
            await self.app(scope, receive, send)
            return
        given = _bearer(scope)
        token = match(self.tokens, given) if given is not None else None
        if token is None:
            why = "a valid API token is needed (Authorization: Bearer TOKEN)"
            await refuse(scope, send, 401, why if given is None else "unknown API token")
            return
        method = scope.get("method", "GET")
        if token.access != "rw" and method not in READ_METHODS:
            await refuse(scope, send, 403, f"token {token.name} is read-only")
            return
        await self.app(scope, receive, send)
