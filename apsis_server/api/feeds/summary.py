"""The summary feed: a snapshot of jobs, recent runs and agents, then every change."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Mapping
from typing import Any

import msgspec

from apsis_common import __version__
from apsis_common.states import State
from apsis_server.agents.registry import Registry
from apsis_server.api.feeds.messages import AgentChanged, JobChanged, JobRemoved, Runs, Snapshot
from apsis_server.api.feeds.subscribers import Subscriber, dumps
from apsis_server.api.views import Agent, agent_view, job_view, run_view, time_text, upcoming
from apsis_server.core.jobs import Job
from apsis_server.core.runs import Run
from apsis_server.engine.engine import Engine
from apsis_server.store.base import Changes, RunFilter

RECENT_RUNS = 200
ACTIVE = (State.STARTING, State.RUNNING, State.STOPPING)


class SummaryFeed:
    """The summary subscribers and what they are sent: run changes as they are
    committed, job and agent changes as comparing finds them."""

    def __init__(
        self,
        engine: Engine,
        registry: Registry | None,
        max_messages: int,
        max_bytes: int,
        poll_period: float,
        gather: float = 0.0,
    ) -> None:
        self.engine = engine
        self.gather = gather
        self.registry = registry
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.poll_period = poll_period
        self._subscribers: set[Subscriber] = set()
        self._jobs_seen: Mapping[str, Job] = engine.jobs
        self._agents_seen: dict[str, Agent] = {}
        self._last_poll = 0.0
        self._gathered: dict[str, Run] = {}
        self._flush: asyncio.TimerHandle | None = None

    # -- the listener's part: enqueue only ----------------------------------------

    def publish(self, changes: Changes) -> None:
        """Queue the committed run changes, and any job change, for every subscriber.

        Run changes are gathered for `gather` seconds and sent as one message of
        their latest states: under a burst, a message per commit to each of fifty
        clients was most of the server's work. Nothing is lost: a run's `times`
        hold every state it passed through."""
        self._gathered.update(changes.runs)
        if self.gather <= 0:
            self._send_runs()
        elif self._gathered and self._flush is None:
            loop = asyncio.get_running_loop()
            self._flush = loop.call_later(self.gather, self._send_runs)
        self._check_jobs()

    def _send_runs(self) -> None:
        self._flush = None
        gathered, self._gathered = self._gathered, {}
        if gathered and self._subscribers:
            now = self.engine.clock()
            self._broadcast(Runs(runs=[run_view(run, now) for run in gathered.values()]))

    def _broadcast(self, message: object) -> None:
        text = dumps(message)
        for sub in self._subscribers:
            sub.push(text)

    # -- jobs and agents: compared, since nothing announces their changes -----

    def _check_jobs(self) -> None:
        jobs = self.engine.jobs
        if jobs is self._jobs_seen:
            return
        old, self._jobs_seen = self._jobs_seen, jobs
        now = self.engine.clock()
        for job_id, job in jobs.items():
            before = old.get(job_id)
            if before is None or (before is not job and before != job):
                self._broadcast(JobChanged(job=job_view(job, upcoming(job, now))))
        for job_id in old.keys() - jobs.keys():
            self._broadcast(JobRemoved(job_id=job_id))

    def agents(self) -> list[Agent]:
        """Every agent, as `GET /api/v1/agents` shows them."""
        if self.registry is None:
            return []
        running: dict[str | None, int] = {}
        for run in self.engine.runs.values():
            if run.state in ACTIVE:
                running[run.agent_id] = running.get(run.agent_id, 0) + 1
        return [agent_view(c, running.get(c.agent_id, 0)) for c in self.registry.agents.values()]

    def poll(self) -> None:
        """Announce job and agent changes; cheap to call often (rate limited)."""
        now = time.monotonic()
        if now - self._last_poll < self.poll_period * 0.9 or not self._subscribers:
            return
        self._last_poll = now
        self._check_jobs()
        for agent in self.agents():
            key = _agent_key(agent)
            if self._agents_seen.get(agent.agent_id) != key:
                self._agents_seen[agent.agent_id] = key
                self._broadcast(AgentChanged(agent=agent))

    # -- subscribing: register and read the snapshot in one synchronous step ---

    def subscribe(self) -> tuple[Subscriber, dict[str, Any]]:
        """A new summary subscriber and its snapshot message (a `Snapshot` as plain
        values, ready for `dumps`)."""
        sub = Subscriber(self.max_messages, self.max_bytes)
        engine = self.engine
        now = engine.clock()
        self._check_jobs()  # earlier subscribers hear of job changes before this snapshot
        jobs = [job_view(j, upcoming(j, now)) for j in sorted(engine.jobs.values(), key=_job_id)]
        recent = {r.run_id: r for r in engine.store.query(RunFilter(limit=RECENT_RUNS))}
        recent.update(engine.runs)
        agents = self.agents()
        for agent in agents:
            self._agents_seen.setdefault(agent.agent_id, _agent_key(agent))
        self._subscribers.add(sub)
        snapshot = Snapshot(
            version=__version__,
            time=time_text(now),
            jobs=jobs,
            runs=[run_view(r, now) for r in recent.values()],
            agents=agents,
        )
        plain: dict[str, Any] = msgspec.to_builtins(snapshot)
        return sub, plain

    def unsubscribe(self, sub: Subscriber) -> None:
        self._subscribers.discard(sub)

    @property
    def subscribed(self) -> bool:
        """Whether anyone subscribes: checked on every commit, so cheap."""
        return bool(self._subscribers)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)


def _job_id(job: Job) -> str:
    return job.job_id


def _agent_key(agent: Agent) -> Agent:
    # A heartbeat alone is not news; a state, version or load change is.
    return dataclasses.replace(agent, last_heartbeat=None)
