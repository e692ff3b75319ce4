"""Templates: expansion with the ora helpers, bind errors, and load-time checks."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest

from apsis_server.core.bound import BindError, bind, to_plain
from apsis_server.core.calendars import parse_calendar_data
from apsis_server.core.programs import parse_program
from apsis_server.core.templates import (
    TemplateError,
    Templates,
    check_template,
    default_helpers,
)

SCOPE = {"date": "2024-03-01", "run_id": "r7", "job_id": "a/b", "args": {"date": "2024-03-01"}}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain", "plain"),
        ("{{ date }}", "2024-03-01"),
        ("{{ run_id }}/{{ job_id }}", "r7/a/b"),
        ("{{ Date(date) - 1 }}", "2024-02-29"),
        ("{{ (Date(date) + 3).weekday }}", "Mon"),
        ("{{ Daytime(9, 30, 0) }}", "09:30:00"),
        ("{{ get_calendar('Mon-Fri').after(Date('2024-03-02')) }}", "2024-03-04"),
        ("{{ get_calendar('hols').after(Date('2024-03-04')) }}", "2024-03-05"),
        ("{{ TimeZone('Europe/London').name }}", "Europe/London"),
        ("{{ from_local((Date(date), Daytime(12, 0, 0)), 'UTC') }}", "2024-03-01T12:00:00+00:00"),
        ("{{ to_local(Time(2024, 3, 1, 12, 0, 0, 'UTC'), 'Asia/Tokyo').daytime }}", "21:00:00"),
    ],
)
def test_expand(text: str, expected: str) -> None:
    hols = parse_calendar_data("hols", {"holidays": ["2024-03-04"]})
    templates = Templates(default_helpers({"hols": hols}))
    assert templates.expand(text, SCOPE) == expected


def test_default_templates_know_the_helpers() -> None:
    ora_helpers = {"Date", "Daytime", "Time", "TimeZone", "get_calendar", "from_local", "to_local"}
    assert set(default_helpers()) == ora_helpers
    assert ora_helpers <= Templates().helper_names
    assert not ora_helpers & Templates({}).helper_names


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{{ nope }}", "'nope' is undefined"),
        ("{{ Date('soon') }}", "failed"),
        ("{{ get_calendar('Nope') }}", "unknown calendar 'Nope'"),
        ("{{ date.__class__ }}", "failed"),
    ],
)
def test_expand_errors(text: str, message: str) -> None:
    with pytest.raises(TemplateError, match=message):
        Templates().expand(text, SCOPE)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("echo {{ date }} {{ Date(date) + 1 }}", None),
        ("{{ run_id }}", None),
        ("{{ other }}", "template uses unknown name(s): other"),
        ("{{ date | }}", "bad template"),
        ("{% for x in y %}", "bad template"),
    ],
)
def test_check_template(text: str, error: str | None) -> None:
    found = check_template(Templates(), text, {"date", "run_id"}, "program.command")
    if error is None:
        assert found is None
    else:
        assert found is not None and found.key_path == "program.command"
        assert error in found.message


def test_bind_process_program_sets_env() -> None:
    program = parse_program(
        {"type": "shell", "command": "load {{ date }}", "env": {"vars": {"D": "{{ date }}"}}}
    )
    bound = to_plain(bind(program, Templates(), SCOPE))
    assert bound["argv"] == ["/bin/bash", "-c", "load 2024-03-01"]
    assert bound["env"] == {
        "D": "2024-03-01",
        "APSIS_RUN_ID": "r7",
        "APSIS_JOB_ID": "a/b",
        "APSIS_ARG_DATE": "2024-03-01",
    }


def test_bind_error_carries_the_message() -> None:
    program = parse_program(["/bin/echo", "{{ missing }}"])
    with pytest.raises(BindError, match="'missing' is undefined"):
        bind(program, Templates(), SCOPE)


@pytest.mark.parametrize(
    ("form", "expected"),
    [
        (
            {"type": "internal.archive", "age": "1 day", "path": "/var/{{ date }}.db"},
            {"type": "internal.archive", "age": 86400.0, "path": "/var/2024-03-01.db"},
        ),
        ({"type": "internal.vacuum"}, {"type": "internal.vacuum"}),
        ({"type": "no-op"}, {"type": "no-op", "duration": 0.0, "success": True}),
    ],
)
def test_bind_other_programs(form: dict[str, Any], expected: dict[str, Any]) -> None:
    assert to_plain(bind(parse_program(form), Templates(), SCOPE)) == expected


def test_bind_expands_every_text_field_of_a_process_program() -> None:
    program = parse_program(
        {
            "type": "program",
            "argv": ["load", "{{ date }}"],
            "host": "h-{{ date }}",
            "user": "u-{{ date }}",
            "cwd": "/d/{{ date }}",
            "env": {"vars": {"D": "{{ date }}"}},
            "timeout": {"duration": "{{ 2 * 30 }} min", "signal": "INT"},
        }
    )
    bound = to_plain(bind(program, Templates(), SCOPE))
    assert bound["argv"] == ["load", "2024-03-01"]
    assert (bound["host"], bound["user"], bound["cwd"]) == (
        "h-2024-03-01",
        "u-2024-03-01",
        "/d/2024-03-01",
    )
    assert bound["env"]["D"] == "2024-03-01"
    assert bound["timeout"] == {"duration": 3600.0, "signal": 2}


def test_every_templated_field_is_checked_at_load() -> None:
    program = parse_program(
        {
            "type": "shell",
            "command": "{{ a }}",
            "host": "{{ b }}",
            "user": "{{ c }}",
            "cwd": "{{ d }}",
            "env": {"vars": {"E": "{{ e }}"}},
            "timeout": "{{ f }}",
        }
    )
    assert dict(program.template_fields()) == {
        "command": "{{ a }}",
        "host": "{{ b }}",
        "user": "{{ c }}",
        "cwd": "{{ d }}",
        "env.vars.E": "{{ e }}",
        "timeout.duration": "{{ f }}",
    }


@pytest.mark.parametrize(
    ("timeout", "message"),
    [
        ("{{ date }}", "program.timeout.duration: expected a duration"),
        ("{{ 0 }}", "program.timeout.duration: expected a positive duration"),
        ("{{ nope }}", "'nope' is undefined"),
    ],
)
def test_bind_error_for_a_bad_timeout(timeout: str, message: str) -> None:
    program = parse_program({"type": "shell", "command": "x", "timeout": {"duration": timeout}})
    with pytest.raises(BindError, match=message):
        bind(program, Templates(), SCOPE)


# (template, part of the error): every way a template can fail to compile is an error
# of the field, never another exception.
BAD_TEMPLATES = [
    ("echo {{ date | nosuchfilter }}", "no filter named 'nosuchfilter'"),
    ("{{ date is nosuchtest }}", "no test named 'nosuchtest'"),
    ("{{ date | }}", "bad template"),
    ("{% for x in y %}", "bad template"),
    ("{{ date }", "bad template"),
    ("{{ nope }}", "template uses unknown name(s): nope"),
    # Jinja leaves these to run time, when the branch is taken: caught at load all the same.
    ("{% if date %}{{ date | nosuchfilter }}{% endif %}", "no filter named 'nosuchfilter'"),
    ("{% if date is nosuchtest %}x{% endif %}", "no test named 'nosuchtest'"),
    ("{% filter nosuchfilter %}x{% endfilter %}", "no filter named 'nosuchfilter'"),
    ("{% include 'other' %}", "templates cannot use other templates"),
    ("{% set loop = 1 %}{% for x in [1] %}{% endfor %}", None),
    ("{{ " + "(" * 2000 + "1" + ")" * 2000 + " }}", "bad template"),
    ("line one\n{{ date | nosuchfilter }}", "line 2: no filter named 'nosuchfilter'"),
]


@pytest.mark.parametrize(("text", "error"), BAD_TEMPLATES)
def test_every_template_error_is_a_field_error(text: str, error: str | None) -> None:
    found = check_template(Templates(), text, {"date"}, "program.command")
    if error is None:
        assert found is None
        return
    assert found is not None and found.key_path == "program.command"
    assert error in found.message, found.message
    assert len(found.message) < 300  # a long template is shortened in the message


def test_known_filters_and_tests_pass_the_check() -> None:
    text = "{{ date | default('x') | upper | shquote }}{% if date is defined %}y{% endif %}"
    assert check_template(Templates(), text, {"date"}, "program.command") is None


@pytest.mark.parametrize(
    "value",
    [
        "plain",
        "two words",
        'it\'s "quoted"',
        "x; touch pwned",
        "$(touch pwned) `touch pwned` $HOME",
        "",
        "café ünïcode ☃",
        "new\nline\ttab",
        "-n",
        "*",
    ],
)
def test_shquote_makes_an_arg_one_shell_word(value: str, tmp_path: Path) -> None:
    command = Templates().expand("printf %s {{ name | shquote }}", {"name": value})
    assert shlex.split(command) == ["printf", "%s", value]
    # And bash itself reads it back as the one word, running nothing inside it.
    done = subprocess.run(
        ["/bin/bash", "-c", command], cwd=tmp_path, capture_output=True, check=True
    )
    assert done.stdout.decode() == value
    assert list(tmp_path.iterdir()) == []


def test_shquote_of_an_undefined_name_fails() -> None:
    with pytest.raises(TemplateError, match="'nope' is undefined"):
        Templates().expand("echo {{ nope | shquote }}", {})
