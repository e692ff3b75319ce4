"""HMAC signing: every tampering is refused, a good request passes once."""

from __future__ import annotations

import pytest

from apsis_common.auth import NONCE, SIGNATURE, TIMESTAMP, Key, Verifier, sign
from apsis_common.errors import AuthError

KEY = Key("k1", b"s" * 32)
OTHER = Key("k1", b"t" * 32)


def _verifier(now: float = 1000.0) -> Verifier:
    return Verifier(lambda: {KEY.key_id: KEY.secret}, max_skew=30, clock=lambda: now)


def test_good_request_passes_once() -> None:
    v = _verifier()
    headers = sign(KEY, "POST", "/procs?x=1", b"body", now=1000.0)
    assert v.verify("POST", "/procs?x=1", headers, b"body") == "k1"
    with pytest.raises(AuthError):  # replayed nonce
        v.verify("POST", "/procs?x=1", headers, b"body")


@pytest.mark.parametrize(
    ("method", "target", "body", "change"),
    [
        ("POST", "/procs", b"body", {}),  # changed body (below)
        ("GET", "/procs?x=1", b"body", {}),  # other method
        ("POST", "/procs/other", b"body", {}),  # other path
        ("POST", "/procs?x=1", b"body", {TIMESTAMP: "900.0"}),  # stale and re-signed? no: mismatch
        ("POST", "/procs?x=1", b"body", {SIGNATURE: "0" * 64}),
        ("POST", "/procs?x=1", b"body", {NONCE: "other"}),
    ],
)
def test_tampering_is_refused(
    method: str, target: str, body: bytes, change: dict[str, str]
) -> None:
    headers = sign(
        KEY,
        "POST",
        "/procs?x=1",
        b"changed" if not change and target == "/procs" else body,
        now=1000.0,
    )
    headers.update(change)
    with pytest.raises(AuthError):
        _verifier().verify(method, target, headers, body)


def test_wrong_secret_stale_and_missing() -> None:
    with pytest.raises(AuthError):
        _verifier().verify("GET", "/", sign(OTHER, "GET", "/", b"", now=1000.0), b"")
    with pytest.raises(AuthError):
        _verifier(now=1100.0).verify("GET", "/", sign(KEY, "GET", "/", b"", now=1000.0), b"")
    with pytest.raises(AuthError):
        _verifier().verify("GET", "/", {}, b"")
    with pytest.raises(AuthError):
        _verifier().verify(
            "GET", "/", sign(Key("k2", KEY.secret), "GET", "/", b"", now=1000.0), b""
        )
