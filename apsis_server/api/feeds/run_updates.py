"""The run-updates feed: one run's state, log, metadata and output, until it finishes."""

from __future__ import annotations

from apsis_server.api.feeds.messages import Log, Meta, RunChanged, output_message
from apsis_server.api.feeds.subscribers import Mark, RunSubscriber, dumps
from apsis_server.api.views import LogEntry, log_view, run_view
from apsis_server.core import runs
from apsis_server.engine.engine import Engine
from apsis_server.store.base import Changes, OutputName


class RunUpdates:
    """The subscribers to single runs, by run id. Output is not queued, only
    marked: the handler reads it from the store (see `fanout.py`)."""

    def __init__(self, engine: Engine, max_messages: int, max_bytes: int) -> None:
        self.engine = engine
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self._subscribers: dict[str, set[RunSubscriber]] = {}
        # On a standby: how many of each followed run's log lines were sent.
        self._log_sent: dict[str, int] = {}

    # -- the listener's part: enqueue only ----------------------------------------

    def publish(self, changes: Changes) -> None:
        """Queue what changed in each subscribed run; end the feeds of finished runs."""
        logs: dict[str, list[LogEntry]] = {}
        passed: dict[str, list[runs.LogEntry]] = {}  # states entered in this step
        for entry in changes.log:
            if entry.run_id in self._subscribers:
                logs.setdefault(entry.run_id, []).append(log_view(entry))
                if entry.state is not None:
                    passed.setdefault(entry.run_id, []).append(entry)
        for run_id, entries in logs.items():
            self._send(run_id, Log(entries=entries))
        for run_id, meta in changes.meta.items():
            if run_id in self._subscribers:
                self._send(run_id, Meta(meta=meta))
        for chunk in changes.output:
            for sub in self._subscribers.get(chunk.run_id, ()):
                position = chunk.position(sub.name)
                if position is not None:
                    sub.more_output(position + len(chunk.data))
        now = self.engine.clock()
        for run in changes.runs.values():
            if run.run_id in self._subscribers:
                self._publish_run(run, passed.get(run.run_id, []), now)

    def _publish_run(self, run: runs.Run, passed: list[runs.LogEntry], now: float) -> None:
        """Tell every transition, even of a run that went on in the same step
        (scheduled → waiting → starting): first the states it left, then its own."""
        for entry in passed[:-1]:
            self._send(run.run_id, RunChanged(run=run_view(run, now, entry)))
        self._send(run.run_id, RunChanged(run=run_view(run, now)))
        if run.state.finished:
            self._log_sent.pop(run.run_id, None)
            for sub in self._subscribers.pop(run.run_id):
                sub.push(Mark.END)

    def follows(self, run_id: str) -> bool:
        """Whether anyone follows this run."""
        return run_id in self._subscribers

    def unseen_log(self, run_id: str, log: list[runs.LogEntry]) -> list[runs.LogEntry]:
        """The run's log lines not sent yet (a standby reads the whole log from the
        store each time the leader changes the run)."""
        sent = self._log_sent.get(run_id, len(log))
        self._log_sent[run_id] = len(log)
        return log[sent:]

    def _send(self, run_id: str, message: object) -> None:
        text = dumps(message)
        for sub in self._subscribers.get(run_id, ()):
            sub.push(text)

    # -- subscribing: register and queue the initial messages in one step -------

    def stored_output(self, run_id: str) -> None:
        """On a standby: the leader may have stored more of the run's output."""
        for sub in self._subscribers.get(run_id, ()):
            sub.more_output(self.engine.store.output_length(run_id, sub.name))

    def subscribe(
        self, run_id: str, init: bool, offset: int, name: OutputName = OutputName.MERGED
    ) -> RunSubscriber:
        """A new subscriber to one run and its output `name`, with its initial
        messages queued.

        A negative `offset` counts back from the end of the output. LookupError if
        there is no such run.
        """
        engine = self.engine
        run = engine.get(run_id)
        run_id = run.run_id
        sub = RunSubscriber(run_id, self.max_messages, self.max_bytes, name)
        length = engine.store.output_length(run_id, name)
        start = max(0, length + offset) if offset < 0 else min(offset, length)
        sub.sent = sub.end = start
        if init:
            store = engine.store
            sub.push(dumps(RunChanged(run=run_view(run, engine.clock()))))
            sub.push(dumps(Log(entries=[log_view(e) for e in store.log(run_id)])))
            sub.push(dumps(Meta(meta=store.meta(run_id))))
            if start == length:
                sub.push(dumps(output_message(start, b"")))
            self._log_sent[run_id] = len(store.log(run_id))
        sub.more_output(length)
        if run.state.finished:
            sub.push(Mark.END)
        else:
            self._subscribers.setdefault(run_id, set()).add(sub)
        return sub

    def unsubscribe(self, sub: RunSubscriber) -> None:
        subs = self._subscribers.get(sub.run_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subscribers[sub.run_id]
                self._log_sent.pop(sub.run_id, None)

    @property
    def subscribed(self) -> bool:
        """Whether anyone subscribes: checked on every commit, so cheap."""
        return bool(self._subscribers)

    @property
    def subscribers(self) -> int:
        return sum(len(s) for s in self._subscribers.values())
