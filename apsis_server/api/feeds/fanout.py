"""The websocket feeds: fan-out of engine changes to live subscribers (docs/api.md).

Theory of operation. `Feeds` is one of the engine's listeners: after every
commit it turns the `Changes` batch into feed messages (`summary.py` for the
summary feed, `run_updates.py` for the feeds of single runs), serialises each
once and appends the same text to the bounded queue (`subscribers.py`) of every
interested subscriber. It never awaits and never touches a socket, so a slow
client cannot slow the engine. Each websocket handler (`routes.py`) owns a
TaskGroup that drains its subscriber's queue into the socket.

Output is not copied into queues: it is already durable in the store, so a run
subscriber's queue only holds a marker saying "there is more output" and its
handler reads the bytes from the store, chunk by chunk, at the client's pace.

A subscriber falls too far behind when its queue overflows or one send stays
blocked longer than `send_timeout` (the client is not reading). Its handler then
stops, closes the socket with code 1013 and a reason, and the client is
expected to reconnect, getting a fresh snapshot.

A subscriber is registered and its snapshot read in one synchronous step: every
commit before it is in the snapshot, every commit after it is in its queue.
"""

from __future__ import annotations

from apsis_server.agents.registry import Registry
from apsis_server.api.feeds.run_updates import RunUpdates
from apsis_server.api.feeds.subscribers import RunSubscriber, Subscriber
from apsis_server.api.feeds.summary import SummaryFeed
from apsis_server.engine.engine import Engine
from apsis_server.store.base import Changes


class Feeds:
    """The engine listener that fans changes out to websocket subscribers."""

    def __init__(
        self,
        engine: Engine,
        registry: Registry | None = None,
        *,
        max_messages: int = 20_000,
        max_bytes: int = 8 * 1024 * 1024,
        send_timeout: float = 3.0,
        poll_period: float = 1.0,
        gather: float = 0.0,
    ) -> None:
        self.engine = engine
        self.send_timeout = send_timeout
        self.summary = SummaryFeed(engine, registry, max_messages, max_bytes, poll_period, gather)
        self.runs = RunUpdates(engine, max_messages, max_bytes)
        engine.subscribe(self)

    def __call__(self, changes: Changes) -> None:
        """Called by the engine after each commit: enqueue only."""
        if self.summary.subscribed:
            self.summary.publish(changes)
        if self.runs.subscribed:
            self.runs.publish(changes)

    def followed(self, run_ids: list[str]) -> None:
        """On a standby: the leader changed these runs (as the database tells, see
        `store.lease.RunChanges`). Their state goes to the summary feed; the log
        lines, metadata and output length of runs someone follows go to theirs."""
        if not (self.summary.subscribed or self.runs.subscribed):
            return
        store = self.engine.store
        changes = Changes()
        followed = []
        for run_id in run_ids:
            run = store.get(run_id)
            if run is None:
                continue
            changes.runs[run_id] = run
            if self.runs.follows(run_id):
                changes.log += self.runs.unseen_log(run_id, store.log(run_id))
                changes.meta[run_id] = store.meta(run_id)
                followed.append(run_id)
        self(changes)
        for run_id in followed:
            self.runs.stored_output(run_id)

    def unsubscribe(self, sub: Subscriber) -> None:
        """Forget a subscriber of either feed (its handler is done)."""
        if isinstance(sub, RunSubscriber):
            self.runs.unsubscribe(sub)
        else:
            self.summary.unsubscribe(sub)

    @property
    def subscribers(self) -> int:
        return self.summary.subscribers + self.runs.subscribers
