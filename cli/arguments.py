"""Command-line words turned into API values: job ids, run ids, times, args, states."""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterable, Sequence

from apsis_common.errors import BadInput, NotFound
from apsis_common.states import State
from apsis_common.times import format_time, parse_duration, parse_time
from cli.errors import Ambiguous, UsageError

_RUN_ID = re.compile(r"r?([0-9]+)")


def _fuzzy(query: str, job_id: str) -> bool:
    """True if every word of `query` appears in `job_id`, in order (ignoring case)."""
    text, pos = job_id.lower(), 0
    for word in query.lower().split():
        found = text.find(word, pos)
        if found < 0:
            return False
        pos = found + len(word)
    return True


def match_job(query: str, job_ids: Iterable[str]) -> str:
    """The job `query` names: the exact id, else a unique prefix, else a unique fuzzy match.

    Raises `Ambiguous` (a usage error) listing the candidates, or `NotFound`.
    """
    ids = sorted(set(job_ids))
    if query in ids:
        return query
    for matcher in (lambda i: i.startswith(query), lambda i: _fuzzy(query, i)):
        candidates = [i for i in ids if matcher(i)]
        if len(candidates) == 1:
            return candidates[0]
        if candidates:
            raise Ambiguous(query, candidates)
    raise NotFound(f"no job matches {query!r}")


def run_id(text: str) -> str:
    """`r42` from `r42` or `42`."""
    match = _RUN_ID.fullmatch(text.strip())
    if match is None:
        raise UsageError(f"expected a run id like r42, got {text!r}")
    return f"r{int(match.group(1))}"


def state(text: str) -> State:
    try:
        return State(text.strip().lower())
    except ValueError:
        names = ", ".join(s.value for s in State)
        raise UsageError(f"unknown state {text!r}; states are {names}") from None


def states(text: str) -> str:
    """A comma-separated list of states, checked, as the API's `state=` value."""
    return ",".join(state(part).value for part in text.split(",") if part.strip())


def _local(text: str) -> float | None:
    """A time without a zone, read as local time (`2026-11-26 21:00`, `2026-11-26`)."""
    try:
        dt = datetime.datetime.fromisoformat(text)
    except ValueError:
        return None
    if dt.tzinfo is not None:
        return None
    return dt.astimezone().timestamp()


def when(text: str, now: float, *, past: bool) -> str:
    """API time text for a command-line time.

    Accepts `now`, ISO 8601 with a zone, a local date/time without one, or a
    duration (`10m`, `1h 30m`) counted back from now if `past`, else forward;
    `+10m` and `-10m` give the direction explicitly.
    """
    text = text.strip()
    if text.lower() == "now":
        return str(format_time(now))
    local = _local(text)
    if local is not None:
        return str(format_time(local))
    try:
        return str(format_time(parse_time(text)))
    except BadInput:
        pass
    sign = -1.0 if past else 1.0
    if text[:1] in "+-" and text[:1]:
        sign, text = (1.0 if text[0] == "+" else -1.0), text[1:]
    text = text.removesuffix(" ago").removeprefix("in ")
    try:
        return str(format_time(now + sign * parse_duration(text)))
    except BadInput:
        raise UsageError(
            f"expected a time like 2026-11-26T21:00:00Z, '2026-11-26 21:00' or '10m', got {text!r}"
        ) from None


def run_args(pairs: Sequence[str]) -> dict[str, str]:
    """`{"name": "value"}` from `name=value` words."""
    args: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise UsageError(f"expected ARG=VALUE, got {pair!r}")
        args[name.strip()] = value
    return args
