"""The feeds' queues in process: a real engine and store, subscribers without sockets."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from typing import Any

from apsis_common import protocol as p
from apsis_server.agents.choice import Choice
from apsis_server.agents.dispatch import Command
from apsis_server.api.feeds.fanout import Feeds
from apsis_server.api.feeds.subscribers import Mark, RunSubscriber, Subscriber
from apsis_server.core.jobs import Job
from apsis_server.core.programs import parse_program
from apsis_server.core.templates import Templates
from apsis_server.engine.engine import Engine
from apsis_server.engine.operations import Operations
from apsis_server.store.base import STDOUT
from apsis_server.store.memory import MemoryStore
from tests.harness import run_async


class NoAgents:
    def choose(
        self, host: str | None, user: str | None, busy: Callable[[], Mapping[str, int]]
    ) -> Choice:
        raise LookupError("no agents here")

    def start(self, agent_id: str, proc: p.StartProc) -> None: ...

    def command(self, agent_id: str, command: Command) -> None: ...

    def withdraw(self, agent_id: str, proc_id: str) -> None: ...

    async def output(
        self, agent_id: str, proc_id: str, start: int, stop: int, fd: int = 1
    ) -> bytes:
        return b""


def engine() -> Engine:
    engine = Engine(MemoryStore(), NoAgents(), Templates(), clock=lambda: 1_800_000_000.0)
    noop = parse_program({"type": "no-op", "duration": 60})
    engine.set_jobs({"tick": Job(job_id="tick", params=(), program=noop)}, Templates())
    return engine


def queued(sub: Subscriber) -> list[Any]:
    items: list[Any] = []
    while sub._items:
        item = sub._items.popleft()
        items.append(json.loads(item) if isinstance(item, str) else item)
    return items


def test_summary_subscriber_gets_every_change_in_order() -> None:
    eng = engine()
    feeds = Feeds(eng)
    sub, snapshot = feeds.summary.subscribe()
    assert snapshot["type"] == "snapshot" and [j["job_id"] for j in snapshot["jobs"]] == ["tick"]
    run = eng.schedule("tick", {})
    messages = queued(sub)
    assert [[r["run_id"] for r in m["runs"]] for m in messages] == [[run.run_id]]
    assert messages[0]["runs"][0]["state"] == "running"
    Operations(eng).stop(run.run_id)
    assert [[r["state"] for r in m["runs"]] for m in queued(sub)] == [["success"]]
    # What one commit changes is one message, whatever the number of runs.
    first, second = eng.schedule("tick", {}, commit=False), eng.schedule("tick", {}, commit=False)
    eng.commit()
    assert [[r["run_id"] for r in m["runs"]] for m in queued(sub)] == [
        [first.run_id, second.run_id]
    ]


def test_overflow_drops_only_the_slow_subscriber_and_never_blocks() -> None:
    eng = engine()
    feeds = Feeds(eng, max_messages=10)
    slow, _ = feeds.summary.subscribe()
    fast, _ = feeds.summary.subscribe()
    for _ in range(8):
        eng.schedule("tick", {})
        queued(fast)  # this one keeps up
    assert not slow.too_slow.is_set()
    for _ in range(4):
        eng.schedule("tick", {})
        queued(fast)
    assert slow.too_slow.is_set() and "too slow" in slow.reason
    assert not fast.too_slow.is_set()
    assert queued(slow) == []  # its queue is dropped, not kept growing
    eng.schedule("tick", {})
    assert len(queued(fast)) == 1


def test_run_subscriber_queues_output_markers_not_bytes() -> None:
    eng = engine()
    feeds = Feeds(eng)
    run = eng.schedule("tick", {})
    sub = feeds.runs.subscribe(run.run_id, True, 0)
    assert isinstance(sub, RunSubscriber)
    assert [m["type"] for m in queued(sub)] == ["run", "log", "meta", "output"]
    eng.add_output(run.run_id, STDOUT, 0, b"x" * 100_000)
    eng.add_output(run.run_id, STDOUT, 100_000, b"y" * 10)
    eng.commit()
    assert queued(sub) == [Mark.OUTPUT]  # one marker for both chunks
    assert sub.end == 100_010 and sub.sent == 0
    Operations(eng).stop(run.run_id)
    items = queued(sub)
    assert [i["type"] for i in items[:-1] if isinstance(i, dict)][-1] == "run"
    assert items[-1] is Mark.END
    assert feeds.subscribers == 0  # a finished run's subscribers are let go


def test_summary_gathers_changes_into_one_message_per_period() -> None:
    async def scenario() -> None:
        eng = engine()
        feeds = Feeds(eng, gather=0.05)
        sub, _ = feeds.summary.subscribe()
        runs = [eng.schedule("tick", {}) for _ in range(5)]  # five commits
        Operations(eng).stop(runs[0].run_id)
        assert queued(sub) == []  # nothing yet: gathering
        await asyncio.sleep(0.1)
        (message,) = queued(sub)
        got = {r["run_id"]: r for r in message["runs"]}
        assert list(got) == [r.run_id for r in runs]
        first = got[runs[0].run_id]
        # The latest state, with every state it went through.
        assert first["state"] == "success" and {"running", "success"} <= set(first["times"])

    run_async(scenario)
