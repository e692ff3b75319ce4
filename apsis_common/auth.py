"""HMAC request signing and verification, used in both directions.

A signed request carries four headers: the key id, a timestamp, a random nonce
and HMAC-SHA256(secret, method, path+query, timestamp, nonce, sha256(body)).
The verifier checks the key, the clock skew, the nonce (each accepted once) and
compares signatures in constant time. Any failure is a bare `AuthError`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from apsis_common.errors import AuthError

KEY_ID = "x-apsis-key-id"
TIMESTAMP = "x-apsis-timestamp"
NONCE = "x-apsis-nonce"
SIGNATURE = "x-apsis-signature"


@dataclass(frozen=True)
class Key:
    """A shared secret and the id that names it."""

    key_id: str
    secret: bytes

    @staticmethod
    def generate(key_id: str | None = None) -> Key:
        return Key(key_id or secrets.token_hex(8), secrets.token_bytes(32))


def _digest(
    secret: bytes, method: str, target: str, timestamp: str, nonce: str, body: bytes
) -> str:
    message = "\n".join(
        (method.upper(), target, timestamp, nonce, hashlib.sha256(body).hexdigest())
    ).encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def sign(
    key: Key, method: str, target: str, body: bytes, now: float | None = None
) -> dict[str, str]:
    """Headers that authenticate a request for `target` (path plus query string)."""
    timestamp = f"{time.time() if now is None else now:.6f}"
    nonce = secrets.token_hex(16)
    return {
        KEY_ID: key.key_id,
        TIMESTAMP: timestamp,
        NONCE: nonce,
        SIGNATURE: _digest(key.secret, method, target, timestamp, nonce, body),
    }


class Verifier:
    """Checks signed requests against a set of valid keys, remembering nonces."""

    def __init__(
        self,
        keys: Callable[[], Mapping[str, bytes]],
        max_skew: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._keys = keys
        self._max_skew = max_skew
        self._clock = clock
        self._nonces: dict[str, float] = {}
        self._next_prune = 0.0

    def verify(self, method: str, target: str, headers: Mapping[str, str], body: bytes) -> str:
        """The key id of a valid request; AuthError otherwise (nonce then used up)."""
        key_id = headers.get(KEY_ID)
        timestamp = headers.get(TIMESTAMP)
        nonce = headers.get(NONCE)
        signature = headers.get(SIGNATURE)
        if not (key_id and timestamp and nonce and signature) or len(nonce) > 64:
            raise AuthError("unauthenticated")
        secret = self._keys().get(key_id)
        if secret is None:
            raise AuthError("unauthenticated")
        try:
            stamp = float(timestamp)
        except ValueError:
            raise AuthError("unauthenticated") from None
        now = self._clock()
        if not abs(now - stamp) <= self._max_skew:
            raise AuthError("unauthenticated")
        expected = _digest(secret, method, target, timestamp, nonce, body)
        if not hmac.compare_digest(expected, signature):
            raise AuthError("unauthenticated")
        self._prune(now)
        if nonce in self._nonces:
            raise AuthError("unauthenticated")
        self._nonces[nonce] = stamp + self._max_skew
        return key_id

    def _prune(self, now: float) -> None:
        # A nonce need only be remembered while its timestamp is within the skew.
        if now < self._next_prune:
            return
        self._next_prune = now + 1.0
        self._nonces = {n: exp for n, exp in self._nonces.items() if exp >= now}
