"""Templates in program fields that are not text (a no-op's `duration`, an
archive's `age`, a timeout's `signal`...), as the earlier Apsis took them: kept
as text when the job loads, expanded and converted when a run is bound, and the
run errors with the reason when the result is not a value of that field."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from apsis_common.states import State
from apsis_server.core.bound import (
    BindError,
    BoundInternal,
    BoundNoOp,
    BoundProcess,
    BoundTimeout,
    InternalKind,
    bind,
)
from apsis_server.core.fields import Invalid
from apsis_server.core.jobs import load_yaml, parse_job
from apsis_server.core.programs import Program, parse_program
from apsis_server.core.templates import Templates
from apsis_server.store.sqlite import SqliteStore
from tests.engine_kit import QuietAgents, new_engine
from tests.harness import run_async

TEMPLATES = Templates()


def bound(form: dict[str, Any], **args: str) -> Any:
    return bind(parse_program(form), TEMPLATES, {**args, "args": args, "run_id": "r1"})


GOOD: list[tuple[str, dict[str, Any], dict[str, str], Any]] = [
    (
        "no-op duration",
        {"type": "no-op", "duration": "{{ seconds }}"},
        {"seconds": "2.5"},
        BoundNoOp(2.5),
    ),
    (
        "no-op duration with a unit",
        {"type": "no-op", "duration": "{{ n }} min", "success": False},
        {"n": "2"},
        BoundNoOp(120.0, False),
    ),
    (
        "archive age and counts",
        {
            "type": "internal.archive",
            "age": "{{ days }} days",
            "count": "{{ n }}",
            "chunk_size": "{{ n }}",
            "chunk_sleep": "{{ pause }}",
            "path": "archive-{{ days }}.db",
        },
        {"days": "3", "n": "50", "pause": "0.5"},
        BoundInternal(
            InternalKind.ARCHIVE,
            {
                "age": 259200.0,
                "count": 50,
                "chunk_size": 50,
                "chunk_sleep": 0.5,
                "path": "archive-3.db",
            },
        ),
    ),
]


@pytest.mark.parametrize(
    ("form", "args", "expected"), [c[1:] for c in GOOD], ids=[c[0] for c in GOOD]
)
def test_templated_values_are_converted_when_bound(
    form: dict[str, Any], args: dict[str, str], expected: Any
) -> None:
    assert bound(form, **args) == expected


@pytest.mark.parametrize(
    ("sig", "number"), [("SIGKILL", 9), ("INT", 2), ("15", 15), ("sigusr1", 10)]
)
def test_timeout_and_stop_signals_from_templates(sig: str, number: int) -> None:
    form = {
        "type": "program",
        "argv": ["sleep", "3"],
        "timeout": {"duration": "{{ t }}", "signal": "{{ sig }}"},
        "stop": {"signal": "{{ sig }}", "grace_period": "{{ t }}s"},
    }
    program = bound(form, sig=sig, t="7")
    assert isinstance(program, BoundProcess)
    assert program.timeout == BoundTimeout(7.0, number)
    assert (program.stop_signal, program.stop_grace) == (number, 7.0)


BAD: list[tuple[str, dict[str, Any], dict[str, str], str]] = [
    (
        "no-op duration",
        {"type": "no-op", "duration": "{{ d }}"},
        {"d": "soon"},
        "program.duration: expected a duration like '30s' or '10 min', got 'soon'",
    ),
    (
        "negative no-op duration",
        {"type": "no-op", "duration": "{{ d }}"},
        {"d": "-1"},
        "program.duration: expected a duration",
    ),
    (
        "archive age",
        {"type": "internal.archive", "age": "{{ d }}"},
        {"d": "old"},
        "program.age: expected a duration",
    ),
    (
        "archive count",
        {"type": "internal.archive", "age": 60, "count": "{{ n }}"},
        {"n": "0"},
        "program.count: expected a positive integer, got 0",
    ),
    (
        "timeout signal",
        {"type": "program", "argv": ["x"], "timeout": {"duration": 5, "signal": "{{ s }}"}},
        {"s": "SIGNOPE"},
        "program.timeout.signal: expected a signal like SIGTERM, got 'SIGNOPE'",
    ),
    (
        "stop grace period",
        {"type": "shell", "command": "x", "stop": {"grace_period": "{{ g }}"}},
        {"g": "a while"},
        "program.stop.grace_period: ",
    ),
    (
        "a template that fails",
        {"type": "no-op", "duration": "{{ Date(d) }}"},
        {"d": "garbage"},
        "failed",
    ),
]


@pytest.mark.parametrize(("form", "args", "message"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_a_bad_value_from_a_template_is_a_bind_error(
    form: dict[str, Any], args: dict[str, str], message: str
) -> None:
    with pytest.raises(BindError) as caught:
        bound(form, **args)
    assert message in str(caught.value)


def test_the_bind_error_names_the_template() -> None:
    with pytest.raises(BindError, match=r"from the template '\{\{ d \}\}'"):
        bound({"type": "no-op", "duration": "{{ d }}"}, d="soon")


def test_values_without_templates_are_still_checked_when_the_job_loads() -> None:
    with pytest.raises(Invalid, match=r"program\.duration: expected a duration"):
        parse_program({"type": "no-op", "duration": "soon"})
    with pytest.raises(Invalid, match=r"program\.timeout\.signal: expected a signal"):
        parse_program({"type": "shell", "command": "x", "timeout": {"duration": 1, "signal": "X"}})


def test_templates_in_values_are_checked_for_names_when_the_job_loads() -> None:
    text = "params: [a]\nprogram: {type: no-op, duration: '{{ b }}'}\n"
    with pytest.raises(Invalid, match=r"program\.duration: template uses unknown name\(s\): b"):
        parse_job("j", load_yaml(text), TEMPLATES)


def test_the_job_shows_the_template_as_written() -> None:
    program = parse_program({"type": "no-op", "duration": "{{ d }}"})
    assert program == Program(type="no-op", duration="{{ d }}")
    assert program.to_plain()["duration"] == "{{ d }}"
    timeout = parse_program(
        {"type": "shell", "command": "x", "timeout": {"duration": 1, "signal": "{{ s }}"}}
    ).to_plain()["timeout"]
    assert timeout == {"duration": 1.0, "signal": "{{ s }}"}
    assert int(signal.SIGTERM) == parse_program("x").stop.signal


JOBS = {
    "nap": "params: [d]\nprogram: {type: no-op, duration: '{{ d }}'}\n",
}


@pytest.mark.parametrize(("arg", "errors"), [("0", False), ("soon", True)])
def test_a_run_errors_when_its_value_is_bad(tmp_path: Path, arg: str, errors: bool) -> None:
    async def scenario() -> None:
        store = SqliteStore(tmp_path / "apsis.db")
        engine = new_engine(store, JOBS, QuietAgents())
        run = engine.get(engine.schedule("nap", {"d": arg}).run_id)
        assert (run.state == State.ERROR) == errors
        messages = [e.message for e in store.log(run.run_id)]
        found = any("program.duration: expected a duration" in m for m in messages)
        assert found == errors, messages
        store.close()

    run_async(scenario)
