"""Firing job actions when runs finish: schedule, retry, webhook, email.

Actions fire once, on the transition into a finished state (not on a later
mark), and each firing is written to the run log of both runs involved.
Webhooks are delivered by one task with retries, so a slow URL never holds up
the engine.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx

from apsis_server.core.actions import (
    Action,
    EmailAction,
    RetryAction,
    ScheduleAction,
    WebhookAction,
)
from apsis_server.core.runs import Run
from apsis_server.core.templates import TemplateError
from apsis_server.jsonview import run_json

if TYPE_CHECKING:
    from apsis_server.engine import Engine

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Delivery:
    run_id: str
    url: str
    payload: dict[str, Any]


def retry_delay(action: RetryAction, number: int) -> float:
    """The wait before retry `number` (from 1)."""
    delay = action.delay * action.backoff ** (number - 1)
    return delay if action.max_delay is None else min(delay, action.max_delay)


class ActionRunner:
    """Decides and applies the actions of runs that just finished."""

    def __init__(
        self, engine: Engine, webhook_attempts: int = 5, webhook_delay: float = 0.5
    ) -> None:
        self._engine = engine
        self._deliveries: asyncio.Queue[Delivery] = asyncio.Queue()
        self._attempts = webhook_attempts
        self._delay = webhook_delay

    def fire(self, finished: list[Run], meta: Mapping[str, Mapping[str, Any]]) -> None:
        for run in finished:
            job = self._engine.jobs.get(run.job_id)
            for action in job.actions if job is not None else ():
                try:
                    self._fire(run, action, meta.get(run.run_id, {}))
                except (TemplateError, ValueError, LookupError) as exc:
                    self._engine.note(run.run_id, f"{action.type} action failed: {exc}")

    def _fire(self, run: Run, action: Action, meta: Mapping[str, Any]) -> None:
        engine = self._engine
        scope = {**run.args, "args": run.args, "run_id": run.run_id, "job_id": run.job_id}
        scope["state"] = run.state.value

        def expand(text: str) -> str:
            return engine.templates.expand(text, scope)

        if isinstance(action, ScheduleAction):
            if action.states is not None and run.state not in action.states:
                return
            target = engine.jobs.get(expand(action.job_id))
            if target is None:
                raise LookupError(f"no job {expand(action.job_id)!r}")
            args = {k: expand(v) for k, v in action.args.items()}
            args.update({p: run.args[p] for p in target.params if p not in args and p in run.args})
            args = {p: v for p, v in args.items() if p in target.params}
            new = engine.create(
                target, args, engine.clock(), message=f"scheduled by an action of {run.run_id}"
            )
            engine.note(run.run_id, f"schedule action: {new.run_id} of {target.job_id}")
        elif isinstance(action, RetryAction):
            self._retry(run, action, meta)
        elif isinstance(action, WebhookAction):
            if run.state in action.states:
                payload = {"run": run_json(run, engine.clock())}
                self._deliveries.put_nowait(Delivery(run.run_id, expand(action.url), payload))
        elif isinstance(action, EmailAction) and run.state in action.states:
            engine.note(run.run_id, "email action skipped: no SMTP server is configured")

    def _retry(self, run: Run, action: RetryAction, meta: Mapping[str, Any]) -> None:
        if run.state not in action.states:
            return
        if action.exit_codes is not None:
            code = meta.get("exit_code", self._engine.store.meta(run.run_id).get("exit_code"))
            if code not in action.exit_codes:
                return
        if run.retry >= action.max:
            self._engine.note(run.run_id, f"retry action: no more retries ({action.max} made)")
            return
        job = self._engine.jobs[run.job_id]
        number = run.retry + 1
        delay = retry_delay(action, number)
        new = self._engine.create(
            job,
            dict(run.args),
            self._engine.clock() + delay,
            rerun_of=run.run_id,
            retry=number,
            message=f"retry {number} of {action.max} of {run.run_id}",
        )
        self._engine.note(run.run_id, f"retry action: {new.run_id} in {delay:g}s")

    async def run(self) -> None:
        """Deliver webhooks, forever."""
        async with httpx.AsyncClient(timeout=10.0) as client:
            while True:
                delivery = await self._deliveries.get()
                await self._deliver(client, delivery)

    async def _deliver(self, client: httpx.AsyncClient, delivery: Delivery) -> None:
        error = ""
        for attempt in range(1, self._attempts + 1):
            try:
                response = await client.post(delivery.url, json=delivery.payload)
                if response.status_code < 400:
                    self._note(delivery, f"webhook delivered to {delivery.url} (attempt {attempt})")
                    return
                error = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                error = str(exc) or type(exc).__name__
            self._note(delivery, f"webhook to {delivery.url} failed ({error}), attempt {attempt}")
            await asyncio.sleep(self._delay * 2 ** (attempt - 1))
        self._note(delivery, f"webhook to {delivery.url} given up after {self._attempts} attempts")

    def _note(self, delivery: Delivery, message: str) -> None:
        self._engine.note(delivery.run_id, message)
        self._engine.commit()
