"""The outbox: contiguous sequence numbers, persistence, acks, output read at send time."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from apsis_agent.outbox import Ledger, Outbox
from apsis_agent.sender import Delivery, Sender
from apsis_common import codec
from apsis_common.protocol import (
    Ack,
    AgentInfo,
    AgentStarted,
    EventBatch,
    ExitInfo,
    ProcExited,
    ProcOutput,
    ProcStarted,
)
from tests.harness import run_async

EXIT = ExitInfo(0, 0, None, False, {}, 1.0)


def _info() -> AgentInfo:
    return AgentInfo("a", 1, "v", 1, "u", "h", "b", 0, 0, 0, 10, False)


def _batch(outbox: Outbox, max_events: int = 100, max_bytes: int = 1 << 20) -> EventBatch:
    envelopes, _ = outbox.batch(max_events, max_bytes)
    body = codec.encode({"agent_id": "a", "epoch": 1, "events": envelopes})
    return codec.decode(EventBatch, body)


def test_sequence_numbers_are_contiguous_and_persisted(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite")
    assert [outbox.add(AgentStarted(1, 0)) for _ in range(3)] == [1, 2, 3]
    assert outbox.flush()
    assert not outbox.flush()
    outbox.close()
    again = Outbox(tmp_path / "o.sqlite")
    assert again.add(AgentStarted(2, 0)) == 4
    again.flush()
    assert [e.seq for e in _batch(again).events] == [1, 2, 3, 4]


def test_unflushed_events_are_not_sent(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite")
    outbox.add(AgentStarted(1, 0))
    assert _batch(outbox).events == ()
    outbox.flush()
    assert len(_batch(outbox).events) == 1


def test_ack_deletes_and_is_never_reused(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    outbox = Outbox(path)
    for _ in range(5):
        outbox.add(AgentStarted(1, 0))
    outbox.flush()
    assert outbox.ack(3)
    assert not outbox.ack(2)  # stale acks change nothing
    assert [e.seq for e in _batch(outbox).events] == [4, 5]
    assert outbox.ack(99)  # beyond what exists: capped
    assert outbox.acked_seq == 5 and outbox.pending == 0
    outbox.close()
    again = Outbox(path)
    assert again.acked_seq == 5
    assert again.add(AgentStarted(2, 0)) == 6


def test_output_is_read_from_the_file_when_sent(tmp_path: Path) -> None:
    output = tmp_path / "output"
    output.write_bytes(b"hello world")
    outbox = Outbox(tmp_path / "o.sqlite")
    outbox.add(ProcStarted("p", 1, 1, 0.0), started=True)
    outbox.add_output("p", 1, output, 0, 5)
    outbox.add_output("p", 1, output, 5, 6)
    outbox.add(ProcExited("p", EXIT, 11), final=True)
    outbox.flush()
    assert outbox.ledger("p") == Ledger(started=True, final=True, enqueued=11)
    assert outbox.unacked_bytes == {"p": 11} and outbox.unacked_total == 11
    events = [e.event for e in _batch(outbox).events]
    assert events[1] == ProcOutput("p", 1, 0, b"hello")
    assert events[2] == ProcOutput("p", 1, 5, b" world")
    # A byte budget cuts a batch (but never below one event).
    assert len(_batch(outbox, max_bytes=5).events) == 2
    assert len(_batch(outbox, max_bytes=0).events) == 1
    outbox.ack(2)
    assert outbox.unacked_bytes == {"p": 6}
    outbox.ack(4)
    assert outbox.unacked_bytes == {} and outbox.unacked_total == 0


def test_forget_keeps_unsent_output(tmp_path: Path) -> None:
    output = tmp_path / "output"
    output.write_bytes(b"abc")
    outbox = Outbox(tmp_path / "o.sqlite")
    outbox.add_output("p", 1, output, 0, 3)
    outbox.flush()
    outbox.forget("p")
    output.unlink()
    assert [e.event for e in _batch(outbox).events] == [ProcOutput("p", 1, 0, b"abc")]
    assert outbox.ledger("p") == Ledger()


def test_each_stream_has_its_events_and_its_offset(tmp_path: Path) -> None:
    """A separate stderr's events say fd 2 and their offsets are in its own file;
    the ledger keeps an offset per stream, flow control counts both."""
    (tmp_path / "output").write_bytes(b"out")
    (tmp_path / "stderr").write_bytes(b"errors")
    outbox = Outbox(tmp_path / "o.sqlite")
    outbox.add_output("p", 2, tmp_path / "stderr", 0, 4)
    outbox.add_output("p", 1, tmp_path / "output", 0, 3)
    outbox.add_output("p", 2, tmp_path / "stderr", 4, 2)
    outbox.flush()
    assert outbox.ledger("p") == Ledger(enqueued=3, enqueued_err=6)
    assert outbox.ledger("p").offsets() == {1: 3, 2: 6}
    assert outbox.unacked_bytes == {"p": 9}
    assert [e.event for e in _batch(outbox).events] == [
        ProcOutput("p", 2, 0, b"erro"),
        ProcOutput("p", 1, 0, b"out"),
        ProcOutput("p", 2, 4, b"rs"),
    ]
    outbox.close()
    assert Outbox(tmp_path / "o.sqlite").ledger("p") == Ledger(enqueued=3, enqueued_err=6)


# The schema of outboxes made before stderr could be separate: one offset a process.
_OLD_SCHEMA = """
CREATE TABLE events (
    seq INTEGER PRIMARY KEY,
    proc_id TEXT,
    body BLOB NOT NULL,
    path TEXT,
    length INTEGER NOT NULL DEFAULT 0,
    data BLOB
);
CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE ledger (
    proc_id TEXT PRIMARY KEY,
    started INTEGER NOT NULL,
    final INTEGER NOT NULL,
    enqueued INTEGER NOT NULL
);
"""


def test_an_outbox_from_before_separate_stderr_is_kept(tmp_path: Path) -> None:
    """An agent upgraded in place opens its old outbox: its events and ledger stay,
    and the ledger gains the stderr offset."""
    path = tmp_path / "o.sqlite"
    old = sqlite3.connect(path)
    old.executescript(_OLD_SCHEMA)
    old.execute(
        "INSERT INTO events (seq, proc_id, body) VALUES (1, 'p', ?)",
        (codec.encode(ProcStarted("p", 1, 1, 0.0)),),
    )
    old.execute("INSERT INTO meta VALUES ('next_seq', 2), ('instance', 42)")
    old.execute("INSERT INTO ledger VALUES ('p', 1, 0, 7)")
    old.commit()
    old.close()
    outbox = Outbox(path)
    assert outbox.instance == f"{42:016x}" and outbox.last_seq == 1
    assert outbox.ledger("p") == Ledger(started=True, enqueued=7)
    assert [e.event for e in _batch(outbox).events] == [ProcStarted("p", 1, 1, 0.0)]
    (tmp_path / "stderr").write_bytes(b"err")
    assert outbox.add_output("p", 2, tmp_path / "stderr", 0, 3) == 2
    outbox.flush()
    outbox.close()
    again = Outbox(path)
    assert again.ledger("p") == Ledger(started=True, enqueued=7, enqueued_err=3)
    again.close()


def test_ledger_survives_restart(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite")
    outbox.add(ProcStarted("p", 1, 1, 0.0), started=True)
    outbox.flush()
    outbox.close()
    assert Outbox(tmp_path / "o.sqlite").ledger("p") == Ledger(started=True)


def test_output_events_go_through_add_output(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        Outbox(tmp_path / "o.sqlite").add(ProcOutput("p", 1, 0, b"x"))


class FullOutbox(Outbox):
    """An outbox on a full disk: storing an ack fails while `full`."""

    full = True

    def ack(self, acked_seq: int) -> bool:
        if self.full:
            raise sqlite3.OperationalError("database or disk is full")
        return super().ack(acked_seq)


def test_an_ack_that_cannot_be_stored_is_retried_not_fatal(tmp_path: Path) -> None:
    """The sender survives a full disk as the server acknowledges: the events stay
    and go again (the server acknowledges duplicates) until the ack is stored."""
    outbox = FullOutbox(tmp_path / "o.sqlite")
    for _ in range(3):
        outbox.add(AgentStarted(1, 0))
    outbox.flush()
    acks: list[int] = []
    settings = SimpleNamespace(agent_id="a", webhook_url="http://127.0.0.1:1/")
    sender = Sender(outbox, lambda: (settings, None), 1, Delivery(), lambda: acks.append(1), _info)  # type: ignore[arg-type, return-value]

    async def post(*_: Any) -> Ack:
        return Ack(3)

    sender._post = post  # type: ignore[method-assign, assignment]
    assert not run_async(sender._send_one)
    assert outbox.acked_seq == 0 and [e.seq for e in _batch(outbox).events] == [1, 2, 3]
    outbox.full = False
    assert run_async(sender._send_one)
    assert outbox.acked_seq == 3 and acks == [1]
    outbox.close()


def test_heartbeats_carry_the_agents_info_once_a_period(tmp_path: Path) -> None:
    """What `GET /agent` answers rides on a batch once a heartbeat period (so the
    server need not poll every agent): not on every batch, and again once the
    period has passed; a batch that was not accepted does not count."""
    outbox = Outbox(tmp_path / "o.sqlite")
    settings = SimpleNamespace(agent_id="a", webhook_url="http://127.0.0.1:1/")
    sender = Sender(outbox, lambda: (settings, None), 1, Delivery(heartbeat=0.3), list, _info)  # type: ignore[arg-type, return-value]
    sent: list[dict[str, Any]] = []
    refuse = [True]

    async def post(_settings: Any, _keys: Any, body: bytes) -> Ack:
        sent.append(codec.decode_plain(body))
        if refuse[0]:
            raise ConnectionRefusedError("refused")
        return Ack(0)

    sender._post = post  # type: ignore[method-assign, assignment]
    assert not run_async(sender._send_one)
    refuse[0] = False
    for _ in range(3):
        assert run_async(sender._send_one)
    time.sleep(0.35)
    assert run_async(sender._send_one)
    with_info = ["info" in body for body in sent]
    assert with_info == [True, True, False, False, True], with_info
    assert codec.decode(EventBatch, codec.encode(sent[1])).info == _info()
    outbox.close()


def test_batches_are_paced_under_load_and_prompt_after_quiet(tmp_path: Path) -> None:
    """Events stored every 5 ms go in batches at most every `pace` seconds (a burst
    of runs makes fewer, larger batches, each a commit on the server); an event
    after a quiet spell goes at once."""
    outbox = Outbox(tmp_path / "o.sqlite")
    settings = SimpleNamespace(agent_id="a", webhook_url="http://127.0.0.1:1/")
    pace = 0.05
    delivery = Delivery(heartbeat=60.0, pace=pace)
    sender = Sender(outbox, lambda: (settings, None), 1, delivery, list, _info)  # type: ignore[arg-type, return-value]
    posts: list[tuple[float, int]] = []  # (when, events in the batch)
    last = asyncio.Event()  # the event after the quiet spell was posted

    async def post(_settings: Any, _keys: Any, body: bytes) -> Ack:
        batch = codec.decode(EventBatch, body)
        posts.append((time.monotonic(), len(batch.events)))
        if batch.events and batch.events[-1].seq == final[0]:
            last.set()
        return Ack(batch.events[-1].seq if batch.events else outbox.acked_seq)

    sender._post = post  # type: ignore[method-assign, assignment]
    final = [-1]

    async def main() -> float:
        task = asyncio.create_task(sender.run())
        began = time.monotonic()
        while time.monotonic() - began < 0.5:  # a burst: an event every 5 ms
            outbox.add(AgentStarted(1, 0))
            outbox.flush()
            sender.wake()
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.3)  # quiet
        stored = time.monotonic()
        outbox.add(AgentStarted(1, 0))
        outbox.flush()
        final[0] = outbox.stored_seq
        sender.wake()
        async with asyncio.timeout(5):
            await last.wait()
        task.cancel()
        return stored

    stored = run_async(main)
    burst = [p for p in posts if p[0] < stored]
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(burst)]
    assert gaps and min(gaps) >= pace * 0.9, gaps
    assert len(burst) <= 0.5 / pace + 3, len(burst)
    assert sum(n for _, n in burst) == outbox.stored_seq - 1, "every event of the burst went"
    assert posts[-1][0] - stored < pace / 2, "after a quiet spell, at once"
    outbox.close()
