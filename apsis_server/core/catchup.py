"""Planning helpers: a job's next due times, and what to do with times missed while down.

Pure: the caller passes the watermark (the last time the server planned up to) and
the time now; the result says which missed times to run and which to record as
`skipped` with `SKIP_REASON`. Nothing missed is dropped silently: past the
enumeration `limit`, the count of what was not listed is returned.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from apsis_server.core.fields import (
    Collector,
    FieldError,
    Fields,
    Invalid,
    choice,
    duration,
    integer,
)
from apsis_server.core.schedules import Due, Schedule

SKIP_REASON = "missed while the server was down"


class CatchUpPolicy(enum.StrEnum):
    """Which schedule times missed while the server was down are run."""

    ALL = "all"
    LATEST = "latest"
    NONE = "none"


@dataclass(frozen=True)
class CatchUp:
    """A catch-up policy; a field left None is taken from the server default."""

    policy: CatchUpPolicy | None = None
    window: float | None = None  # how far back before now a missed time is still run
    max: int | None = None  # at most this many missed times run, per schedule

    def over(self, default: CatchUp) -> CatchUp:
        """This policy with its unset fields taken from `default`."""
        return CatchUp(
            policy=self.policy if self.policy is not None else default.policy,
            window=self.window if self.window is not None else default.window,
            max=self.max if self.max is not None else default.max,
        )


# The server's default when its config says nothing (spec/04-interfaces.md).
DEFAULT_CATCH_UP = CatchUp(CatchUpPolicy.LATEST, 86400.0, 100)


def parse_catch_up(value: Any, path: str) -> CatchUp:
    """`catch_up: latest` or `catch_up: {policy, window, max}`."""
    policies = choice(*(p.value for p in CatchUpPolicy))
    if isinstance(value, str):
        return CatchUp(policy=CatchUpPolicy(policies(value, path)))
    f = Fields(value, path, "a policy name or a mapping {policy, window, max}")
    c = Collector()
    policy = c(lambda: f.take("policy", policies, None), None)
    window = c(lambda: f.take("window", duration, None), None)
    most = c(lambda: f.take("max", integer, None), None)
    if most is not None and most < 0:
        c.errors.append(FieldError(f.at("max"), f"expected a count of 0 or more, got {most}"))
    c(f.done, None)
    c.check()
    return CatchUp(None if policy is None else CatchUpPolicy(policy), window, most)


def parse_waiting(value: Any, path: str) -> float | None:
    """`waiting: {max_time: 1h}`: the longest a run may wait; None for no limit."""
    f = Fields(value, path, "a mapping {max_time}")
    if not f.has("max_time"):
        raise Invalid([FieldError(f.at("max_time"), "missing")])
    max_time = f.take("max_time", lambda v, p: None if v is None else duration(v, p), None)
    f.done()
    return max_time


@dataclass(frozen=True)
class Missed:
    """One schedule time that passed while the server was down."""

    schedule_key: str
    due: Due


@dataclass(frozen=True)
class CatchUpPlan:
    """Missed times to run now, and missed times to record as skipped."""

    run: list[Missed] = field(default_factory=list)
    skip: list[Missed] = field(default_factory=list)
    # Missed times past the enumeration limit, neither run nor listed.
    not_listed: int = 0


def _missed(
    schedule: Schedule, watermark: float, now: float, params: tuple[str, ...]
) -> Iterator[Due]:
    for due in schedule.due(watermark, params):
        if due.time >= now:
            return
        if due.time > watermark:
            yield due


def catch_up(
    schedules: Iterable[Schedule],
    params: tuple[str, ...],
    watermark: float,
    now: float,
    policy: CatchUp,
    limit: int = 10_000,
) -> CatchUpPlan:
    """What to do with each schedule's times in (watermark, now), per schedule.

    `all` runs the most recent `max` missed times that are within `window` of now;
    `latest` runs only the last missed time, if it is within the window; `none`
    runs nothing. Every other missed time is to be recorded as skipped. Disabled
    schedules have no missed times. At most `limit` missed times per schedule are
    listed (the oldest are left out); `not_listed` counts the rest.
    """
    resolved = policy.over(DEFAULT_CATCH_UP)
    window = resolved.window if resolved.window is not None else float("inf")
    cap = {
        CatchUpPolicy.ALL: resolved.max if resolved.max is not None else limit,
        CatchUpPolicy.LATEST: 1,
        CatchUpPolicy.NONE: 0,
    }[resolved.policy or CatchUpPolicy.LATEST]
    plan = CatchUpPlan()
    not_listed = 0
    for schedule in schedules:
        if not schedule.enabled:
            continue
        # Keep only the newest `limit`, so a long outage never builds a huge list.
        newest: deque[Due] = deque(maxlen=limit)
        total = 0
        for due in _missed(schedule, watermark, now, params):
            newest.append(due)
            total += 1
        not_listed += total - len(newest)
        missed = list(newest)
        eligible = [d for d in missed if d.time >= now - window]
        chosen = {id(d) for d in eligible[len(eligible) - cap :]} if cap else set()
        for due in missed:
            (plan.run if id(due) in chosen else plan.skip).append(Missed(schedule.key, due))
    return CatchUpPlan(plan.run, plan.skip, not_listed)


def describe(policy: CatchUp) -> str:
    """`latest within 86400s, at most 100`, for logs and the UI."""
    text = policy.policy.value if policy.policy is not None else "default"
    if policy.window is not None:
        text += f" within {policy.window:g}s"
    return text + (f", at most {policy.max}" if policy.max is not None else "")
