"""The agent messages to msgpack or JSON bytes and back (msgspec), every field type checked."""

from __future__ import annotations

import functools
import hashlib
from typing import Any, TypeVar, cast

import msgspec

from apsis_common.errors import ProtocolError
from apsis_common.protocol import (
    EVENT_TYPES,
    JSON,
    MSGPACK,
    AgentInfo,
    Envelope,
    Event,
    EventBatch,
    EventType,
    ProcSpec,
)

T = TypeVar("T")

_MSGPACK = msgspec.msgpack.Encoder()
# Sorted keys: a spec's JSON is its digest's input.
_JSON = msgspec.json.Encoder(order="sorted")
# msgspec's errors are ValueErrors; a value nested too deep is a RecursionError.
_Undecodable = (ValueError, RecursionError)


def encode(message: Any) -> bytes:
    """msgpack bytes of a message (or of plain dicts, lists and scalars)."""
    return _MSGPACK.encode(_tagged(message))


def encode_json(message: Any) -> bytes:
    """Compact JSON bytes of a message, keys sorted; bytes fields as base64."""
    return _JSON.encode(_tagged(message))


def decode(cls: type[T], data: bytes, content_type: str = MSGPACK) -> T:
    """A message of type `cls` from msgpack (or JSON) bytes; ProtocolError if malformed."""
    try:
        value = _decoder(_shape(cls), content_type.startswith(JSON)).decode(data)
    except _Undecodable as exc:
        raise ProtocolError(f"{cls.__name__}: {exc}") from None
    return cast(T, _with_events(value))


def from_plain(cls: type[T], plain: Any) -> T:
    """A message of type `cls` from plain values (parsed JSON), every field type checked."""
    try:
        value = msgspec.convert(plain, _shape(cls))
    except _Undecodable as exc:
        raise ProtocolError(f"{cls.__name__}: {exc}") from None
    return cast(T, _with_events(value))


def decode_plain(data: bytes) -> Any:
    """The plain values of msgpack bytes, unchecked: for data the agent wrote itself
    (its outbox keeps events encoded, and adds output bytes when it sends them)."""
    return msgspec.msgpack.decode(data)


def spec_digest(spec: ProcSpec) -> str:
    """A stable hash: the same spec under the same proc id is the same start."""
    return hashlib.sha256(encode_json(spec)).hexdigest()


# -- the union of events ------------------------------------------------------------
#
# msgspec decodes a union of dataclasses only if they are its own tagged structs, and
# encodes a dataclass by its fields alone: so events carry their `type` tag as plain
# dicts, and the two messages that hold events are read with each event as a dict
# first, then decoded as the class its tag names.


def _tagged(message: Any) -> Any:
    """The message, its events as dicts that carry their tag."""
    if isinstance(message, EventBatch):
        return {**vars(message), "events": [_tagged(e) for e in message.events]}
    if isinstance(message, Envelope):
        return {**vars(message), "event": _tagged(message.event)}
    tag = getattr(type(message), "TYPE", None)
    if tag is not None:
        return {**vars(message), "type": tag}
    return message


class _Envelope(msgspec.Struct, frozen=True):
    """An `Envelope` whose event is not decoded yet."""

    seq: int
    event: dict[str, Any]


class _EventBatch(msgspec.Struct, frozen=True):
    """An `EventBatch` whose events are not decoded yet."""

    agent_id: str
    epoch: int
    events: tuple[_Envelope, ...]
    instance: str = ""
    acked: int = 0
    info: AgentInfo | None = None


_SHAPES: dict[type[Any], type[Any]] = {EventBatch: _EventBatch, Envelope: _Envelope}


def _shape(cls: type[Any]) -> Any:
    """What msgspec reads for `cls`."""
    return _SHAPES.get(cls, cls)


def _with_events(value: Any) -> Any:
    """A decoded value, events decoded as the classes their tags name."""
    if isinstance(value, _EventBatch):
        events = []
        for i, envelope in enumerate(value.events):
            try:
                events.append(Envelope(envelope.seq, _event(envelope.event)))
            except ProtocolError as exc:
                raise ProtocolError(f"EventBatch events[{i}]: {exc}") from None
        return EventBatch(
            value.agent_id, value.epoch, tuple(events), value.instance, value.acked, value.info
        )
    if isinstance(value, _Envelope):
        return Envelope(value.seq, _event(value.event))
    return value


def _event(plain: dict[str, Any]) -> Event:
    tag: Any = plain.get("type")
    try:
        cls = EVENT_TYPES[EventType(tag)]
    except ValueError:
        raise ProtocolError(f"unknown event type {tag!r}"[:200]) from None
    try:
        event: Event = msgspec.convert(plain, cls)
    except _Undecodable as exc:
        raise ProtocolError(f"{tag} event: {exc}") from None
    return event


@functools.cache
def _decoder(tp: Any, json: bool) -> msgspec.json.Decoder[Any] | msgspec.msgpack.Decoder[Any]:
    """The decoder of one type, built once (msgspec compiles the type's shape)."""
    return msgspec.json.Decoder(tp) if json else msgspec.msgpack.Decoder(tp)
