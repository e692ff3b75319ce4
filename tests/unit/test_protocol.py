"""The wire format: every message round-trips, malformed input is a ProtocolError."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apsis_common import protocol as p
from apsis_common.errors import ProtocolError

EXIT = p.ExitInfo(0, 0, None, False, {"utime": 0.1}, 12.5)
EVENTS: list[p.Event] = [
    p.AgentStarted(3, 2),
    p.ProcStarted("r1.1", 10, 10, 1.5),
    p.ProcStartFailed("r1.1", "no such file: /x"),
    p.ProcOutput("r1.1", 1, 0, b"\x00\xff"),
    p.ProcSignaled("r1.1", 15, "stop"),
    p.ProcExited("r1.1", EXIT, 2),
    p.ProcLost("r1.1", "reboot"),
]


def test_event_batch_round_trip() -> None:
    batch = p.EventBatch("local", 3, tuple(p.Envelope(i + 1, e) for i, e in enumerate(EVENTS)))
    assert p.decode(p.EventBatch, p.encode(batch)) == batch


def test_spec_round_trip_and_digest() -> None:
    spec = p.ProcSpec(("a", "b"), cwd="/tmp", env={"A": "1"}, timeout=p.TimeoutSpec(5.0))
    again = p.decode(p.ProcSpec, p.encode(spec))
    assert again == spec and again.digest() == spec.digest()
    assert p.ProcSpec(("a",)).digest() != spec.digest()
    assert p.decode(p.ProcSpec, p.encode_json(spec), p.JSON) == spec


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\xc1",
        msgpack.packb([1, 2]),
        msgpack.packb({"agent_id": 1, "epoch": 1, "events": []}),
        msgpack.packb({"agent_id": "a", "epoch": True, "events": []}),
        msgpack.packb(
            {"agent_id": "a", "epoch": 1, "events": [{"seq": 1, "event": {"type": "x"}}]}
        ),
        msgpack.packb({"agent_id": "a", "epoch": 1}),
    ],
)
def test_malformed(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        p.decode(p.EventBatch, body)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_crash(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        p.decode(p.EventBatch, data)
