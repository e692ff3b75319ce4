"""The sanity checker at work: what the engine and the agents' registry know, put
to `core.checks.find` every `interval` seconds and whenever someone asks (`GET
/api/v1/checks`, `apsis check`). What is newly found is logged, and POSTed to the
`checks.webhooks` URLs (`{"finding": ...}`, retried). `/metrics` exports the counts
of the latest check. Only the leader checks: a standby holds no unfinished runs.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable

import httpx
from starlette.requests import Request
from starlette.responses import Response

from apsis_common.states import FINISHED, State
from apsis_server.agents.registry import Registry
from apsis_server.api.views import checks_view, encode
from apsis_server.core.checks import AgentSeen, CheckSettings, Facts, Finding, find
from apsis_server.core.jobs import next_times
from apsis_server.core.runs import Run
from apsis_server.core.schedule_types import PluginSchedule
from apsis_server.engine.engine import Engine
from apsis_server.store.base import RunFilter

log = logging.getLogger(__name__)
JSON = {"content-type": "application/json"}

# Finished runs looked at for jobs whose last runs all failed: the newest this many.
RECENT_FINISHED = 2000


class Checker:
    """Checks now and then, keeps the latest findings."""

    def __init__(
        self,
        engine: Engine,
        registry: Registry,
        settings: CheckSettings,
        horizon: float,
        leading: Callable[[], bool],
    ) -> None:
        self.engine = engine
        self.registry = registry
        self.settings = settings
        self.horizon = horizon
        self.leading = leading
        self.time: float | None = None  # of the latest check
        self.findings: list[Finding] = []
        self._told: asyncio.Queue[Finding] = asyncio.Queue(maxsize=1000)

    def check(self) -> list[Finding]:
        """Check now; the findings (none on a standby)."""
        if not self.leading():
            self.time, self.findings = None, []
            return []
        now = self.engine.clock()
        found = find(self._facts(now), self.settings)
        before = {f.message for f in self.findings}
        for f in found:
            if f.message not in before:
                log.warning("check %s: %s", f.check, f.message)
                if self.settings.webhooks and not self._told.full():
                    self._told.put_nowait(f)
        self.time, self.findings = now, found
        return found

    async def run(self, interval: float) -> None:
        """Check every `interval` seconds, and tell the webhooks what is new."""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._tell())
            while True:
                await asyncio.sleep(interval)
                try:
                    self.check()
                except Exception:  # a store hiccup: the next round checks again
                    log.exception("the sanity check failed")

    async def _tell(self, attempts: int = 3, delay: float = 1.0) -> None:
        async with httpx.AsyncClient(timeout=10.0) as client:
            while True:
                finding = await self._told.get()
                body = encode({"finding": checks_view(self.time, [finding]).findings[0]})
                for url in self.settings.webhooks:
                    await _post(client, url, body, attempts, delay)

    def _facts(self, now: float) -> Facts:
        engine = self.engine
        next_due = {}
        failures = {}
        for job in engine.jobs.values():
            due = next_times(job, now, 1)
            if due and due[0].time <= now + self.horizon:
                next_due[job.job_id] = due[0].time
            for schedule in job.schedules:
                if isinstance(schedule, PluginSchedule) and schedule.failure:
                    failures[job.job_id] = (
                        f"its {schedule.type_name} schedule {schedule.failure[0]}"
                    )
        since = now - self.settings.late_window
        started = engine.query(RunFilter(since=since, until=now, limit=1000))
        recent = engine.query(RunFilter(states=tuple(FINISHED), limit=RECENT_FINISHED))
        last: defaultdict[str, list[Run]] = defaultdict(list)
        for run in recent:  # newest first
            last[run.job_id].append(run)
        running: defaultdict[str, list[Run]] = defaultdict(list)
        for run in engine.runs.values():
            if run.state == State.RUNNING and run.agent_id is not None:
                running[run.agent_id].append(run)
        agents = [
            AgentSeen(
                conn.agent_id,
                conn.state.value,
                conn.last_heartbeat,
                conn.running,
                running.pop(conn.agent_id, []),
            )
            for conn in self.registry.agents.values()
        ]
        agents += [AgentSeen(a, "unknown", None, None, runs) for a, runs in running.items()]
        unfinished = list(engine.runs.values())
        return Facts(now, next_due, unfinished, started, last, agents, failures)


async def _post(
    client: httpx.AsyncClient, url: str, body: bytes, attempts: int, delay: float
) -> None:
    for attempt in range(1, attempts + 1):
        try:
            response = await client.post(url, content=body, headers=JSON)
            if response.status_code < 400:
                return
            error = f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            error = str(exc) or type(exc).__name__
        log.warning("check webhook to %s failed (%s), attempt %d", url, error, attempt)
        await asyncio.sleep(delay * 2 ** (attempt - 1))
    log.error("check webhook to %s given up after %d attempts", url, attempts)


async def checks_endpoint(request: Request) -> Response:
    checker: Checker = request.app.state.checker
    findings = checker.check()
    return Response(encode(checks_view(checker.time, findings)), media_type="application/json")
