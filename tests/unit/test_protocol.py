"""The wire format: every message round-trips, malformed input is a ProtocolError."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apsis_common import codec
from apsis_common import protocol as p
from apsis_common.errors import ProtocolError

EXIT = p.ExitInfo(0, 0, None, False, {"utime": 0.1}, 12.5)
EVENTS: list[p.Event] = [
    p.AgentStarted(3, 2),
    p.ProcStarted("r1.1", 10, 10, 1.5),
    p.ProcStartFailed("r1.1", "no such file: /x"),
    p.ProcOutput("r1.1", 1, 0, b"\x00\xff"),
    p.ProcSignaled("r1.1", 15, p.SignalReason.STOP),
    p.ProcExited("r1.1", EXIT, 2),
    p.ProcLost("r1.1", p.LostReason.REBOOT),
]
BATCH = p.EventBatch("local", 3, tuple(p.Envelope(i + 1, e) for i, e in enumerate(EVENTS)))
# The batch as agents have always sent it: each event a map tagged by `type`.
WIRE: dict[str, Any] = {
    "agent_id": "local",
    "epoch": 3,
    "events": [
        {"seq": 1, "event": {"type": "agent.started", "epoch": 3, "recovered": 2}},
        {
            "seq": 2,
            "event": {
                "type": "proc.started",
                "proc_id": "r1.1",
                "pid": 10,
                "pgid": 10,
                "start_time": 1.5,
            },
        },
        {
            "seq": 3,
            "event": {"type": "proc.start_failed", "proc_id": "r1.1", "error": "no such file: /x"},
        },
        {
            "seq": 4,
            "event": {
                "type": "proc.output",
                "proc_id": "r1.1",
                "fd": 1,
                "offset": 0,
                "data": b"\x00\xff",
            },
        },
        {
            "seq": 5,
            "event": {"type": "proc.signaled", "proc_id": "r1.1", "signal": 15, "reason": "stop"},
        },
        {
            "seq": 6,
            "event": {
                "type": "proc.exited",
                "proc_id": "r1.1",
                "exit": {
                    "status": 0,
                    "exit_code": 0,
                    "signal": None,
                    "core_dump": False,
                    "rusage": {"utime": 0.1},
                    "end_time": 12.5,
                },
                "output_length": 2,
                # New: a separate stderr's length (older servers decode it away).
                "stderr_length": 0,
            },
        },
        {"seq": 7, "event": {"type": "proc.lost", "proc_id": "r1.1", "reason": "reboot"}},
    ],
}


def test_event_batch_round_trip() -> None:
    assert codec.decode(p.EventBatch, codec.encode(BATCH)) == BATCH


def test_event_batch_wire_format_is_unchanged() -> None:
    """The events as agents have always sent them; a batch now also names its
    sequence (`instance`), the agent's ack and, once a heartbeat, its `info`, which
    a batch from an older agent lacks and still decodes without."""
    plain = codec.decode_plain(codec.encode(BATCH))
    assert plain == {**WIRE, "instance": "", "acked": 0, "info": None}
    decoded = codec.decode(p.EventBatch, codec.encode(WIRE))
    assert decoded == BATCH
    assert [type(e.event) for e in decoded.events] == [type(e) for e in EVENTS]
    named = p.EventBatch("local", 3, (), instance="00ab", acked=7)
    assert codec.decode(p.EventBatch, codec.encode(named)) == named


def test_event_batch_json_round_trip() -> None:
    """JSON (for debugging) carries bytes as base64."""
    assert codec.decode(p.EventBatch, codec.encode_json(BATCH), p.JSON) == BATCH


def test_one_event_and_one_envelope() -> None:
    envelope = p.Envelope(4, EVENTS[3])
    assert codec.decode(p.Envelope, codec.encode(envelope)) == envelope
    assert codec.decode(p.ProcOutput, codec.encode(EVENTS[3])) == EVENTS[3]
    assert codec.decode_plain(codec.encode(EVENTS[0]))["type"] == "agent.started"


def test_spec_round_trip_and_digest() -> None:
    spec = p.ProcSpec(("a", "b"), cwd="/tmp", env={"A": "1"}, timeout=p.TimeoutSpec(5.0))
    again = codec.decode(p.ProcSpec, codec.encode(spec))
    assert again == spec and codec.spec_digest(again) == codec.spec_digest(spec)
    assert codec.spec_digest(p.ProcSpec(("a",))) != codec.spec_digest(spec)
    assert codec.decode(p.ProcSpec, codec.encode_json(spec), p.JSON) == spec
    assert codec.encode_json(spec) == (
        b'{"argv":["a","b"],"cwd":"/tmp","env":{"A":"1"},"env_inherit":true,"labels":{},'
        b'"login_env":false,"output_max":67108864,"resources":null,"stderr":"merge",'
        b'"stop":{"grace":60.0,"signal":15},"timeout":{"duration":5.0,"signal":15}}'
    )


def test_spec_resources_round_trip_and_change_the_digest() -> None:
    """A run's cgroup limits travel with its spec, and are part of what it is: the
    same proc id with other limits is another start. A spec without them (from an
    older server) decodes with none."""
    plain = p.ProcSpec(("a",))
    limited = p.ProcSpec(("a",), resources=p.Resources(memory=1 << 30, cpu=1.5, pids=100))
    assert codec.decode(p.ProcSpec, codec.encode(limited)) == limited
    assert codec.decode(p.ProcSpec, codec.encode_json(limited), p.JSON) == limited
    assert b'"resources":{"cpu":1.5,"memory":1073741824,"pids":100}' in codec.encode_json(limited)
    assert codec.spec_digest(limited) != codec.spec_digest(plain)
    older = codec.encode({"argv": ["a"]})
    assert codec.decode(p.ProcSpec, older).resources is None
    assert codec.decode(p.ProcSpec, older).login_env is False
    assert codec.decode(p.ProcSpec, older).stderr is p.StderrMode.MERGE  # as it was


def test_names_decode_as_their_enums() -> None:
    results = p.StartResults((p.StartResult("a", p.StartStatus.REFUSED, "no"),))
    assert codec.decode_plain(codec.encode(results))["results"][0]["status"] == "refused"
    again = codec.decode(p.StartResults, codec.encode(results)).results[0]
    assert again.status is p.StartStatus.REFUSED
    summary = p.ProcSummary("a", p.ProcState.EXITED, 5, 0, EXIT)
    assert codec.decode(p.ProcSummary, codec.encode(summary)).state is p.ProcState.EXITED
    lost = codec.decode(p.EventBatch, codec.encode(BATCH)).events[-1].event
    assert isinstance(lost, p.ProcLost) and lost.reason is p.LostReason.REBOOT


def test_plain_values_are_checked_too() -> None:
    assert codec.from_plain(p.ExitInfo, codec.decode_plain(codec.encode(EXIT))) == EXIT
    with pytest.raises(ProtocolError):
        codec.from_plain(p.ExitInfo, {"status": "0"})
    assert codec.from_plain(p.EventBatch, codec.decode_plain(codec.encode(BATCH))) == BATCH


def _event(**event: Any) -> bytes:
    return codec.encode({"agent_id": "a", "epoch": 1, "events": [{"seq": 1, "event": event}]})


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\xc1",
        codec.encode([1, 2]),
        codec.encode({"agent_id": 1, "epoch": 1, "events": []}),
        codec.encode({"agent_id": "a", "epoch": True, "events": []}),
        codec.encode({"agent_id": "a", "epoch": 1.5, "events": []}),
        codec.encode({"agent_id": "a", "epoch": 1}),
        codec.encode({"agent_id": "a", "epoch": 1, "events": [{"seq": 1}]}),
        codec.encode({"agent_id": "a", "epoch": 1, "events": [{"seq": 1, "event": []}]}),
        codec.encode({1: "a", "agent_id": "a", "epoch": 1, "events": []}),
        _event(type="x"),
        _event(type=["proc.lost"], proc_id="a", reason="reboot"),
        _event(proc_id="a", reason="reboot"),
        _event(type="proc.lost", proc_id="a", reason="tired"),
        _event(type="proc.lost", proc_id="a"),
        _event(type="proc.signaled", proc_id="a", signal="15", reason="stop"),
        _event(type="proc.output", proc_id="a", fd=1, offset=0, data=1),
        _event(type="proc.exited", proc_id="a", exit={"status": 0}, output_length=0),
        codec.encode(BATCH) + b"\x00",
    ],
)
def test_malformed(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        codec.decode(p.EventBatch, body)


@pytest.mark.parametrize(
    ("cls", "plain"),
    [
        (p.StartResult, {"proc_id": "a", "status": "maybe"}),
        (p.ProcSummary, {"proc_id": "a", "state": "asleep", "pid": None, "output_length": 0}),
        (p.StartBatch, {"procs": [{"proc_id": "a", "spec": {"argv": "true"}}]}),
        (p.StartBatch, {"procs": [{"proc_id": "a", "spec": {"argv": [1]}}]}),
        (p.StartBatch, {"procs": [{"proc_id": "a", "spec": {"argv": ["a"], "env": {"A": 1}}}]}),
        (p.StopRequest, {"grace": True}),
        (p.Ack, {"acked_seq": None}),
    ],
)
def test_wrong_types(cls: type[Any], plain: Any) -> None:
    for data, content_type in (
        (codec.encode(plain), p.MSGPACK),
        (codec.encode_json(plain), p.JSON),
    ):
        with pytest.raises(ProtocolError):
            codec.decode(cls, data, content_type)


def test_every_cut_of_a_batch_is_refused() -> None:
    body = codec.encode(BATCH)
    for n in range(len(body)):
        with pytest.raises(ProtocolError):
            codec.decode(p.EventBatch, body[:n])


def test_deep_nesting_is_refused() -> None:
    deep = b"\x91" * 100_000 + b"\xc0"
    body = codec.encode({"agent_id": "a", "epoch": 1, "events": [{"seq": 1, "event": {}}]})
    with pytest.raises(ProtocolError):
        codec.decode(p.EventBatch, body.replace(b"\x80", b"\x81\xa1x" + deep))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_crash(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        codec.decode(p.EventBatch, data)
    with contextlib.suppress(ProtocolError):
        codec.decode(p.StartBatch, data)
