"""The sanity checker: what looks wrong in the schedule, the runs and the agents.

Pure: `find` takes what the server knows at one moment (`Facts`) and answers the
findings, each with a severity, a message for people and the web UI page that
shows it (docs/operations.md, "Sanity checks"). The API (`GET /api/v1/checks`),
`apsis check`, the web UI's banner and `/metrics` all show the same findings.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from urllib.parse import quote

from apsis_common.states import State
from apsis_common.times import format_time
from apsis_server.core.runs import Run


class Check(StrEnum):
    NO_RUN_AHEAD = "no-run-ahead"  # a job with a schedule, and no run scheduled
    OVERDUE = "overdue"  # a run still `scheduled` well after its time
    LATE_START = "late-start"  # a run that started well after its time
    ORPHANED = "orphaned"  # runs `running` on an agent that has fewer processes
    SILENT_AGENT = "silent-agent"  # an agent not heard from past its heartbeat
    FAILING = "failing"  # a job whose last runs all failed
    SCHEDULE_FAILED = "schedule-failed"  # a plugin schedule that raised, or gave no time


class Severity(StrEnum):
    WARNING = "warning"
    ERROR = "error"


@dataclass(frozen=True)
class Finding:
    check: Check
    severity: Severity
    message: str
    link: str  # the web UI's page for it
    job_id: str | None = None
    run_id: str | None = None
    agent_id: str | None = None


@dataclass(frozen=True)
class CheckSettings:
    """Thresholds (config `checks:`)."""

    overdue: float = 60.0  # a scheduled run this long past its time
    late: float = 60.0  # a start this long after the schedule time
    late_window: float = 3600.0  # starts looked at: this far back
    silent: float = 30.0  # an agent not heard from for this long
    failures: int = 3  # this many failed runs in a row
    webhooks: tuple[str, ...] = ()  # URLs told of each new finding


@dataclass(frozen=True)
class AgentSeen:
    """One agent as the server sees it."""

    agent_id: str
    state: str  # its connection: connected, connecting, disconnected, failed, stopped…
    last_heard: float | None  # its last heartbeat (None: never)
    reported: int | None  # processes it says it runs (None: not said)
    running: Sequence[Run] = ()  # runs `running` on it, as the server holds them


@dataclass(frozen=True)
class Facts:
    """What the server knows now."""

    now: float
    # Per job with an enabled schedule: its next due time within the horizon.
    next_due: Mapping[str, float] = field(default_factory=dict)
    unfinished: Sequence[Run] = ()
    started: Sequence[Run] = ()  # runs with a schedule time in the late window
    # Per job: its last finished runs, newest first (at least `failures` of them).
    last_finished: Mapping[str, Sequence[Run]] = field(default_factory=dict)
    agents: Sequence[AgentSeen] = ()
    # Per job: what went wrong in a plugin schedule's rule.
    schedule_failures: Mapping[str, str] = field(default_factory=dict)


def find(facts: Facts, settings: CheckSettings) -> list[Finding]:
    """Every finding, errors first, then by check and subject."""
    found = [
        *_no_run_ahead(facts),
        *_overdue(facts, settings),
        *_late_starts(facts, settings),
        *_agents(facts, settings),
        *_failing(facts, settings),
        *_schedule_failures(facts),
    ]
    return sorted(found, key=lambda f: (f.severity != Severity.ERROR, f.check, f.message))


def counts(findings: Iterable[Finding]) -> dict[tuple[Check, Severity], int]:
    """How many findings of each check and severity (every pair, zeros too)."""
    out = {(c, s): 0 for c in Check for s in Severity}
    for f in findings:
        out[f.check, f.severity] += 1
    return out


def _job_link(job_id: str) -> str:
    return f"/jobs/{quote(job_id)}"


def _run_link(run_id: str) -> str:
    return f"/runs/{quote(run_id)}"


def _seconds(value: float) -> str:
    return f"{value:.0f} s" if value < 120 else f"{value / 60:.0f} min"


def _no_run_ahead(facts: Facts) -> Iterable[Finding]:
    scheduled = {r.job_id for r in facts.unfinished if r.state == State.SCHEDULED}
    for job_id, due in sorted(facts.next_due.items()):
        if job_id not in scheduled:
            yield Finding(
                Check.NO_RUN_AHEAD,
                Severity.ERROR,
                f"job {job_id} is due at {format_time(due)} but has no run scheduled",
                _job_link(job_id),
                job_id=job_id,
            )


def _schedule_failures(facts: Facts) -> Iterable[Finding]:
    for job_id, failure in sorted(facts.schedule_failures.items()):
        yield Finding(
            Check.SCHEDULE_FAILED,
            Severity.ERROR,
            f"job {job_id}: {failure}",
            _job_link(job_id),
            job_id=job_id,
        )


def _overdue(facts: Facts, settings: CheckSettings) -> Iterable[Finding]:
    for run in facts.unfinished:
        due = run.schedule_time
        if run.state == State.SCHEDULED and due is not None:
            past = facts.now - due
            if past > settings.overdue:
                yield Finding(
                    Check.OVERDUE,
                    Severity.ERROR,
                    f"run {run.run_id} of {run.job_id} is still scheduled, {_seconds(past)}"
                    " after its time",
                    _run_link(run.run_id),
                    job_id=run.job_id,
                    run_id=run.run_id,
                )


def _late_starts(facts: Facts, settings: CheckSettings) -> Iterable[Finding]:
    for run in facts.started:
        started, due = run.times.get(State.RUNNING.value), run.schedule_time
        if started is None or due is None:
            continue
        late = started - due
        if late > settings.late and facts.now - started <= settings.late_window:
            yield Finding(
                Check.LATE_START,
                Severity.WARNING,
                f"run {run.run_id} of {run.job_id} started {_seconds(late)} after its time",
                _run_link(run.run_id),
                job_id=run.job_id,
                run_id=run.run_id,
            )


def _agents(facts: Facts, settings: CheckSettings) -> Iterable[Finding]:
    for agent in facts.agents:
        if agent.state == "connected":
            yield from _connected_agent(facts, settings, agent)
        elif agent.state in ("disconnected", "failed") or (
            agent.running and agent.state != "connecting"
        ):
            runs = f", with {len(agent.running)} runs running on it" if agent.running else ""
            yield Finding(
                Check.SILENT_AGENT,
                Severity.ERROR,
                f"agent {agent.agent_id} is {agent.state}{runs}",
                "/agents",
                agent_id=agent.agent_id,
            )


def _connected_agent(facts: Facts, settings: CheckSettings, agent: AgentSeen) -> Iterable[Finding]:
    silence = facts.now - agent.last_heard if agent.last_heard is not None else None
    if silence is not None and silence > settings.silent:
        yield Finding(
            Check.SILENT_AGENT,
            Severity.ERROR,
            f"agent {agent.agent_id} has not been heard from for {_seconds(silence)}",
            "/agents",
            agent_id=agent.agent_id,
        )
        return
    # Runs running for a while (their start and its report are settled): more than
    # the agent says it runs means some have no process behind them.
    settled = [
        r
        for r in agent.running
        if facts.now - r.times.get(State.RUNNING.value, facts.now) > settings.silent
    ]
    if agent.reported is not None and len(settled) > agent.reported:
        yield Finding(
            Check.ORPHANED,
            Severity.ERROR,
            f"agent {agent.agent_id} runs {agent.reported} processes, but {len(settled)}"
            f" runs have been running on it for over {_seconds(settings.silent)}",
            "/agents",
            agent_id=agent.agent_id,
        )


def _failing(facts: Facts, settings: CheckSettings) -> Iterable[Finding]:
    failed = (State.FAILURE, State.ERROR)
    for job_id, runs in sorted(facts.last_finished.items()):
        last = runs[: settings.failures]
        if len(last) == settings.failures and all(r.state in failed for r in last):
            yield Finding(
                Check.FAILING,
                Severity.WARNING,
                f"job {job_id}: its last {settings.failures} runs failed"
                f" (latest {last[0].run_id}: {last[0].message or last[0].state.value})",
                _run_link(last[0].run_id),
                job_id=job_id,
                run_id=last[0].run_id,
            )
