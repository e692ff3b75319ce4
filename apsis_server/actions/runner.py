"""Firing job actions when runs finish: schedule, retry, webhook, email, plugin types.

Actions fire once, on the transition into a finished state (not on a later
mark), and each firing is written to the run log of both runs involved. Schedule
and retry actions are decisions (`NewRun`, `Note`) that the engine applies.
Webhooks and emails are delivered by a task of their own each, with retries, so
a slow URL or mail server never holds up the engine (nor the other kind); each
attempt's outcome is written to the run log. A plugin action (docs/extending.md)
is called once, in a task of its own, within its timeout; what it returns, or the
error it raises, or that it timed out, is written to the run log.
"""

from __future__ import annotations

import asyncio
import logging
import smtplib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any, Protocol

import httpx

from apsis_server.actions import mail
from apsis_server.api.views import RunAnswer, encode, run_view
from apsis_server.core.actions import (
    Action,
    EmailAction,
    PluginAction,
    RetryAction,
    ScheduleAction,
    WebhookAction,
)
from apsis_server.core.jobs import Job
from apsis_server.core.runs import Run
from apsis_server.core.templates import TemplateError

JSON_BODY = {"content-type": "application/json"}


class Engine(Protocol):
    """What actions read, and how they write their outcomes to run logs."""

    def clock(self) -> float: ...

    def expand(self, text: str, scope: Mapping[str, Any]) -> str:
        """A template expanded; TemplateError on failure."""

    def job(self, job_id: str) -> Job | None: ...

    def stored_meta(self, run_id: str) -> dict[str, Any]: ...

    def note(self, run_id: str, message: str) -> None: ...

    def commit(self) -> None: ...


@dataclass(frozen=True)
class NewRun:
    """Create a run of `job` (a schedule or retry action), and note it on `source`."""

    source: str
    job: Job
    args: dict[str, str]
    when: float
    why: str
    note: str  # for the source run's log; `{run_id}` is the new run's id
    rerun_of: str | None = None
    retry: int = 0


@dataclass(frozen=True)
class Note:
    """A line for a run's log."""

    run_id: str
    message: str


Decision = NewRun | Note

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Delivery:
    """One webhook or email: `attempt` delivers it once or raises saying why not."""

    run_id: str
    what: str  # "webhook to URL", "email to ADDRESSES"
    attempt: Callable[[], Awaitable[None]]


class Refused(Exception):
    """The receiver answered, but did not take it."""


def retry_delay(action: RetryAction, number: int) -> float:
    """The wait before retry `number` (from 1)."""
    delay = action.delay * action.backoff ** (number - 1)
    return delay if action.max_delay is None else min(delay, action.max_delay)


class ActionRunner:
    """Decides the actions of runs that just finished, and delivers their webhooks
    and emails."""

    def __init__(
        self,
        engine: Engine,
        smtp: mail.SmtpSettings | None = None,
        public_url: str | None = None,
        webhook_attempts: int = 5,
        webhook_delay: float = 0.5,
    ) -> None:
        self._engine = engine
        self._webhooks: asyncio.Queue[Delivery] = asyncio.Queue()
        self._emails: asyncio.Queue[Delivery] = asyncio.Queue()
        self._plugins: asyncio.Queue[tuple[Run, PluginAction]] = asyncio.Queue()
        self._client: httpx.AsyncClient | None = None  # while `run` runs
        self._attempts = webhook_attempts
        self._delay = webhook_delay
        # Where email goes (none: email actions are skipped), and the web UI's
        # address for links to runs.
        self._smtp = smtp
        self._public_url = public_url

    def fire(self, run: Run, job: Job | None, meta: Mapping[str, Any]) -> list[Decision]:
        """The decisions of a just-finished run's actions (its job's, as bound);
        webhooks and emails are queued for delivery."""
        decisions: list[Decision] = []
        for action in job.actions if job is not None else ():
            try:
                decisions += self._fire(run, action, meta)
            except (TemplateError, ValueError, LookupError) as exc:
                decisions.append(Note(run.run_id, f"{action.type} action failed: {exc}"))
        return decisions

    def _fire(self, run: Run, action: Action, meta: Mapping[str, Any]) -> list[Decision]:
        engine = self._engine
        scope = {**run.args, "args": run.args, "run_id": run.run_id, "job_id": run.job_id}
        scope["state"] = run.state.value

        def expand(text: str) -> str:
            return engine.expand(text, scope)

        if isinstance(action, ScheduleAction):
            if action.states is not None and run.state not in action.states:
                return []
            target = engine.job(expand(action.job_id))
            if target is None:
                raise LookupError(f"no job {expand(action.job_id)!r}")
            args = {k: expand(v) for k, v in action.args.items()}
            args.update({p: run.args[p] for p in target.params if p not in args and p in run.args})
            args = {p: v for p, v in args.items() if p in target.params}
            why = f"scheduled by an action of {run.run_id}"
            note = "schedule action: {run_id} of " + target.job_id
            return [NewRun(run.run_id, target, args, engine.clock(), why, note)]
        if isinstance(action, RetryAction):
            return self._retry(run, action, meta)
        if isinstance(action, PluginAction):
            if run.state in action.states:
                self._plugins.put_nowait((run, action))
        elif isinstance(action, WebhookAction):
            if run.state in action.states:
                self._webhook(run, expand(action.url))
        elif isinstance(action, EmailAction) and run.state in action.states:
            if self._smtp is None:
                return [Note(run.run_id, "email action skipped: no SMTP server is configured")]
            self._email(run, self._smtp, tuple(expand(to) for to in action.to))
        return []

    def _webhook(self, run: Run, url: str) -> None:
        # The run as `GET /api/v1/runs/{run_id}` answers it.
        payload = encode(RunAnswer(run_view(run, self._engine.clock())))

        async def post() -> None:
            if self._client is None:
                raise Refused("the server is shutting down")
            response = await self._client.post(url, content=payload, headers=JSON_BODY)
            if response.status_code >= 400:
                raise Refused(f"HTTP {response.status_code}")

        self._webhooks.put_nowait(Delivery(run.run_id, f"webhook to {url}", post))

    def _email(self, run: Run, smtp: mail.SmtpSettings, to: tuple[str, ...]) -> None:
        message: EmailMessage = mail.compose(smtp, to, run, self._public_url)

        async def send() -> None:
            await asyncio.to_thread(mail.send, smtp, message)

        self._emails.put_nowait(Delivery(run.run_id, f"email to {', '.join(to)}", send))

    def _retry(self, run: Run, action: RetryAction, meta: Mapping[str, Any]) -> list[Decision]:
        if run.state not in action.states:
            return []
        if action.exit_codes is not None:
            code = meta.get("exit_code", self._engine.stored_meta(run.run_id).get("exit_code"))
            if code not in action.exit_codes:
                return []
        if run.retry >= action.max:
            return [Note(run.run_id, f"retry action: no more retries ({action.max} made)")]
        job = self._engine.job(run.job_id)
        if job is None:
            raise LookupError(f"no job {run.job_id!r}")
        number = run.retry + 1
        delay = retry_delay(action, number)
        return [
            NewRun(
                run.run_id,
                job,
                dict(run.args),
                self._engine.clock() + delay,
                f"retry {number} of {action.max} of {run.run_id}",
                f"retry action: {{run_id}} in {delay:g}s",
                rerun_of=run.run_id,
                retry=number,
            )
        ]

    async def run(self) -> None:
        """Deliver webhooks and emails, forever."""
        async with httpx.AsyncClient(timeout=10.0) as self._client:
            try:
                async with asyncio.TaskGroup() as tasks:
                    tasks.create_task(self._serve(self._webhooks))
                    tasks.create_task(self._serve(self._emails))
                    tasks.create_task(self._serve_plugins(tasks))
            finally:
                self._client = None

    async def _serve(self, queue: asyncio.Queue[Delivery]) -> None:
        while True:
            await self._deliver(await queue.get())

    async def _serve_plugins(self, tasks: asyncio.TaskGroup) -> None:
        while True:
            run, action = await self._plugins.get()
            tasks.create_task(self._call_plugin(run, action))

    async def _call_plugin(self, run: Run, action: PluginAction) -> None:
        """Call a plugin action once, within its timeout; the outcome goes to the log."""
        what = f"{action.type} action"
        try:
            async with asyncio.timeout(action.timeout):
                said = await action.action.fire(run)
            message = f"{what} done" + (f": {said}" if said else "")
        except TimeoutError:
            message = f"{what} timed out after {action.timeout:g}s"
        except Exception as exc:  # the plugin's error, never the runner's
            log.warning("%s of run %s failed", what, run.run_id, exc_info=exc)
            message = f"{what} failed: {type(exc).__name__}: {exc}"
        self._engine.note(run.run_id, message)
        self._engine.commit()

    async def _deliver(self, delivery: Delivery) -> None:
        what = delivery.what
        for attempt in range(1, self._attempts + 1):
            try:
                await delivery.attempt()
                self._note(delivery, f"{what} delivered (attempt {attempt})")
                return
            except (Refused, httpx.HTTPError, smtplib.SMTPException, OSError) as exc:
                error = str(exc) or type(exc).__name__
            self._note(delivery, f"{what} failed ({error}), attempt {attempt}")
            await asyncio.sleep(self._delay * 2 ** (attempt - 1))
        self._note(delivery, f"{what} given up after {self._attempts} attempts")

    def _note(self, delivery: Delivery, message: str) -> None:
        self._engine.note(delivery.run_id, message)
        self._engine.commit()
