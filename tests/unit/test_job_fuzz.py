"""Random YAML and random structures into `parse_job`: a job either loads or is `Invalid`.

Nothing else may escape (no KeyError, TypeError, template or time-zone errors):
the jobs directory loader reports `Invalid` per file and keeps every other job.
"""

from __future__ import annotations

import contextlib
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apsis_server.core.fields import Invalid
from apsis_server.core.jobs import load_yaml, parse_job
from apsis_server.core.templates import Templates

FUZZ = settings(
    max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)

KEYS = [
    "program",
    "schedule",
    "params",
    "metadata",
    "labels",
    "condition",
    "conditions",
    "action",
    "actions",
    "successors",
    "job_id",
    "waiting",
    "ad_hoc",
    "catch_up",
    "type",
    "command",
    "argv",
    "interval",
    "daytime",
    "tz",
    "cron",
    "date",
    "host",
    "user",
    "timeout",
    "stop",
    "signal",
    "grace_period",
    "duration",
    "enabled",
    "args",
    "max_time",
    "policy",
    "window",
    "max",
    "calendar",
    "weekdays",
    "if",
    "then",
    "job",
    "states",
    "start",
    "end_date",
    "start_date",
    "times",
    "phase",
    "jitter",
    "exit_codes",
    "retry",
    "count",
    "delay",
    "backoff",
    "on",
    "env",
    "vars",
    "inherit",
    "cwd",
    "success",
    "url",
    "to",
    "description",
    "holidays",
    "dst_gap",
    "dst_repeat",
    "expr",
    "value",
    "target_state",
    "check_states",
    "exist",
]
WORDS = [
    "interval",
    "daily",
    "daily-interval",
    "explicit",
    "crontab",
    "dependency",
    "const",
    "schedule",
    "retry",
    "webhook",
    "email",
    "shell",
    "program",
    "no-op",
    "agent",
    "procstar",
    "internal.archive",
    "internal.vacuum",
    "success",
    "failure",
    "error",
    "skipped",
    "running",
    "UTC",
    "America/New_York",
    "Europe/Berlin",
    "Not/AZone",
    "10s",
    "1",
    "day",
    "09:00",
    "24:00",
    "25:61",
    "2026-03-08",
    "2026-02-30",
    "mon-fri",
    "*/5",
    "*",
    "*",
    "*",
    "*",
    "TERM",
    "SIGKILL",
    "99",
    "latest",
    "all",
    "none",
    "{{",
    "x",
    "}}",
    "{{",
    "date",
    "}}",
    "{{",
    "nope(",
    "}}",
    "{%",
    "if",
    "%}",
    "{{",
    "args.x",
    "}}",
    "{{",
    "run_id",
    "}}",
]

text = st.text(st.characters(exclude_categories=["Cs"]), max_size=20)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(WORDS),
    text,
)
keys = st.one_of(st.sampled_from(KEYS), text, st.integers(), st.none())
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(keys, inner, max_size=5),
    ),
    max_leaves=25,
)
# Mappings with string keys only: see test_mixed_key_types for the others.
str_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(KEYS), text), inner, max_size=5),
    ),
    max_leaves=25,
)
programs = st.one_of(
    str_values,
    st.fixed_dictionaries(
        {"type": st.sampled_from(["shell", "program", "no-op", "agent", "internal.archive"])},
        optional=dict.fromkeys(
            ("command", "argv", "timeout", "stop", "env", "host", "cwd"), str_values
        ),
    ),
)
schedules = st.fixed_dictionaries(
    {"type": st.sampled_from(["interval", "daily", "daily-interval", "explicit", "crontab"])},
    optional=dict.fromkeys(
        ("interval", "daytime", "tz", "times", "args", "enabled", "expr"), str_values
    ),
)
jobs = st.fixed_dictionaries(
    {},
    optional={
        "program": programs,
        "schedule": st.one_of(str_values, schedules, st.lists(schedules, max_size=3)),
        "params": str_values,
        "condition": str_values,
        "action": str_values,
        "metadata": str_values,
        "labels": str_values,
        "waiting": str_values,
        "catch_up": str_values,
        "successors": str_values,
    },
)


def check(data: Any) -> None:
    with contextlib.suppress(Invalid):
        parse_job("fuzz/job", data, Templates())


@FUZZ
@given(st.text(max_size=300))
def test_random_text(source: str) -> None:
    try:
        data = load_yaml(source)
    except Invalid:
        return
    check(data)


@FUZZ
@given(values)
def test_random_structures(data: Any) -> None:
    check(data)


@FUZZ
@given(jobs)
def test_job_shaped_structures(data: dict[str, Any]) -> None:
    check(data)


@FUZZ
@given(jobs)
def test_job_shaped_yaml(data: dict[str, Any]) -> None:
    """The structures again, through YAML text and `load_yaml`."""
    try:
        source = yaml.safe_dump(data, allow_unicode=True)
    except (yaml.YAMLError, ValueError):
        return
    try:
        loaded = load_yaml(source)
    except Invalid:
        return
    check(loaded)


def test_mixed_key_types() -> None:
    """Found by this fuzzer: a schedule holding a mapping with keys of mixed types
    made `schedule_types.form_key` (json.dumps with sort_keys) raise TypeError."""
    check(load_yaml("program: {type: no-op}\nschedule: {type: interval, interval: {1: a, b: c}}\n"))
