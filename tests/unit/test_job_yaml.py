"""How job files are read as YAML: no value crashes a load, and YAML 1.1 booleans."""

from __future__ import annotations

import datetime
import os
import textwrap
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from apsis_server.checkjobs import main as check_jobs
from apsis_server.core.conditions import ConstCondition, DependencyCondition
from apsis_server.core.fields import Invalid
from apsis_server.core.jobs import load_yaml, parse_job
from apsis_server.core.templates import Templates
from apsis_server.core.yamlfile import MAX_ALIAS_VALUES, MAX_FILE_SIZE
from apsis_server.jobsdir import load_calendars_dir, load_jobs_dir


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Dates and times that do not exist stay text, for the field to report.
        ("a: 2024-13-01", "2024-13-01"),
        ("a: 2023-02-29", "2023-02-29"),
        ("a: 2027-02-30T00:00:00Z", "2027-02-30T00:00:00Z"),
        ("a: 2024-01-01T25:00:00Z", "2024-01-01T25:00:00Z"),
        ("a: 2024-01-01T00:00:00+25:00", "2024-01-01T00:00:00+25:00"),
        # Those that exist are read as before.
        ("a: 2024-02-29", datetime.date(2024, 2, 29)),
        ("a: 2027-01-01T00:00:00Z", datetime.datetime(2027, 1, 1, tzinfo=datetime.UTC)),
        ("a: 12:00", "12:00"),
        ("a: yes", "yes"),
        ("on: true", True),
    ],
)
def test_values(text: str, expected: Any) -> None:
    key = text.split(":")[0]
    assert load_yaml(text) == {key: expected}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: 0b_", "YAML error: line 1, column 4: cannot read '0b_' as int"),
        ("a: 0x_", "YAML error: line 1, column 4: cannot read '0x_' as int"),
        ("a: ._", "YAML error: line 1, column 4: cannot read '._' as float"),
        ("a:\n  b: !!int abc", "YAML error: line 2, column 6: cannot read 'abc' as int"),
        ("a: !!float abc", "YAML error: line 1, column 4: cannot read 'abc' as float"),
        ("a: !!bool maybe", "YAML error: line 1, column 4: cannot read 'maybe' as bool"),
        ("a: !!timestamp soon", "YAML error: line 1, column 4: cannot read 'soon' as timestamp"),
        ("a: !!set [1]", "YAML error: TypeError"),
        ("a: &x [1, *x]", "YAML error: line 1, column 4: this value contains an alias to itself"),
        ("a: &x {b: [*x]}", "YAML error: line 1, column 4: this value contains an alias to itself"),
        ("a: [1", "YAML syntax error: line 2, column 1"),
        ("a: !!python/name:os.system", "YAML syntax error: line 1, column 4: could not determine"),
        ("a: \x00", "YAML syntax error: unacceptable character"),
    ],
)
def test_values_that_cannot_be_built_are_invalid(text: str, message: str) -> None:
    with pytest.raises(Invalid) as info:
        load_yaml(text)
    [error] = info.value.errors
    assert error.key_path == ""
    assert error.message.startswith(message), error.message


def test_shared_aliases_are_fine() -> None:
    assert load_yaml("x: &x [1]\na: [*x, *x]\n") == {"x": [1], "a": [[1], [1]]}


def _laughs(levels: int, width: int = 9) -> str:
    """The "billion laughs": each level a list of `width` aliases to the one before."""
    lines = [f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("text", "line"),
    [
        (_laughs(9), 5),  # 9**9 values from 470 bytes; refused at the fifth level
        (_laughs(30, width=2), 12),
        ("a: &a {x: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]}\nb: [" + "*a, " * 1000 + "]\n", 2),
        # Merge keys are aliases too.
        (
            "a: &a {"
            + ", ".join(f"k{i}: {i}" for i in range(200))
            + "}\n"
            + "".join(f"m{i}: {{<<: *a}}\n" for i in range(60)),
            26,
        ),
    ],
)
def test_an_alias_bomb_is_refused(text: str, line: int) -> None:
    assert len(text) < 5000
    started = time.monotonic()
    with pytest.raises(Invalid) as info:
        load_yaml(text)
    assert time.monotonic() - started < 1
    [error] = info.value.errors
    assert error.key_path == ""
    assert error.message.startswith(f"YAML error: line {line}, column "), error.message
    assert error.message.endswith(f"aliases expand to more than {MAX_ALIAS_VALUES:,} values"), (
        error.message
    )


def test_aliases_within_the_limit_load() -> None:
    # A common use: shared settings merged into several places.
    text = (
        "defaults: &d {host: workers, user: etl}\n"
        "env: &e {A: '1', B: '2'}\n"
        "a: {<<: *d, env: *e}\nb: {<<: *d, env: *e}\nc: [*e, *e, *e]\n"
    )
    loaded = load_yaml(text)
    assert loaded["a"] == {"host": "workers", "user": "etl", "env": {"A": "1", "B": "2"}}
    assert loaded["c"] == [{"A": "1", "B": "2"}] * 3
    # Up to the limit exactly: one alias to a list of MAX - 1 values adds MAX values.
    big = "a: &a [" + "1, " * (MAX_ALIAS_VALUES - 1) + "]\nb: *a\n"
    assert len(load_yaml(big)["b"]) == MAX_ALIAS_VALUES - 1
    with pytest.raises(Invalid, match="aliases expand to more than"):
        load_yaml("a: &a [" + "1, " * MAX_ALIAS_VALUES + "]\nb: *a\n")


def test_many_values_without_aliases_are_not_counted() -> None:
    text = "&x a: [" + "1, " * (3 * MAX_ALIAS_VALUES) + "]\n"
    assert len(load_yaml(text)["a"]) == 3 * MAX_ALIAS_VALUES


def test_an_oversize_text_is_refused() -> None:
    text = "a: '" + "x" * MAX_FILE_SIZE + "'\n"
    with pytest.raises(Invalid, match="larger than 1 MiB"):
        load_yaml(text)


def test_a_bad_value_fails_only_its_own_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "good.yaml").write_text("program: x\n")
    (tmp_path / "date.yaml").write_text(
        "program: x\nschedule: {type: interval, interval: 60, start_date: 2024-13-01}\n"
    )
    (tmp_path / "time.yaml").write_text(
        "program: x\nschedule: {type: explicit, times: [2027-02-30T00:00:00Z]}\n"
    )
    (tmp_path / "tag.yaml").write_text(
        "program: x\nschedule: {type: interval, interval: !!int x}\n"
    )
    (tmp_path / "loop.yaml").write_text("program: x\nschedule: &s {type: interval, s: *s}\n")
    loaded = load_jobs_dir(tmp_path, Templates())
    assert list(loaded.jobs) == ["good"]
    assert [(e.path, e.key_path) for e in loaded.errors] == [
        ("date.yaml", "schedule.start_date"),
        ("loop.yaml", ""),
        ("tag.yaml", ""),
        ("time.yaml", "schedule.times[0]"),
    ]
    assert check_jobs([str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert (
        "date.yaml: schedule.start_date: expected a date like 2027-01-31, got '2024-13-01'" in out
    )
    assert "1 jobs loaded, 4 errors, 0 warnings" in out


def test_a_template_error_fails_only_its_own_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "good.yaml").write_text("program: x\n")
    (tmp_path / "bad.yaml").write_text(
        'params: [name]\nprogram: {type: shell, command: "echo {{ name | nosuchfilter }}"}\n'
    )
    loaded = load_jobs_dir(tmp_path, Templates())
    assert list(loaded.jobs) == ["good"]
    message = "bad template 'echo {{ name | nosuchfilter }}': no filter named 'nosuchfilter'"
    assert [(e.path, e.key_path, e.message) for e in loaded.errors] == [
        ("bad.yaml", "program.command", message)
    ]
    assert check_jobs([str(tmp_path)]) == 1
    assert f"bad.yaml: program.command: {message}\n" in capsys.readouterr().out


def test_an_unexpected_exception_fails_only_its_own_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The last line of defence: a parser bug is the file's error, with its traceback
    in the log, and the other files still load."""
    (tmp_path / "a.yaml").write_text("program: x\n")
    (tmp_path / "boom.yaml").write_text("program: x\n")
    (tmp_path / "c.yaml").write_text("program: x\n")

    def failing_parse(job_id: str, data: Any, templates: Templates, **kwargs: Any) -> Any:
        if job_id == "boom":
            raise RuntimeError("a bug")
        return parse_job(job_id, data, templates, **kwargs)

    monkeypatch.setattr("apsis_server.jobsdir.parse_job", failing_parse)
    loaded = load_jobs_dir(tmp_path, Templates())
    assert sorted(loaded.jobs) == ["a", "c"]
    assert [(e.job_id, e.path, e.key_path, e.message) for e in loaded.errors] == [
        ("boom", "boom.yaml", "", "cannot load: RuntimeError: a bug")
    ]
    [record] = [r for r in caplog.records if r.name == "apsis_server.jobsdir"]
    assert record.levelname == "ERROR" and "boom.yaml" in record.getMessage()
    assert record.exc_info is not None and "a bug" in caplog.text


def test_an_unexpected_exception_fails_only_its_own_calendar(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "good.yaml").write_text("holidays: [2024-12-25]\n")
    (tmp_path / "boom.cal").write_text("x\n")

    def parse_cal_text(name: str, text: str) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr("apsis_server.jobsdir.parse_cal_text", parse_cal_text)
    loaded = load_calendars_dir(tmp_path)
    assert list(loaded.calendars) == ["good"]
    assert [(e.path, e.message) for e in loaded.errors] == [
        ("boom.cal", "cannot load: RuntimeError: a bug")
    ]
    assert "Traceback" in caplog.text


def test_a_file_over_the_size_limit_is_refused_unread(tmp_path: Path) -> None:
    (tmp_path / "good.yaml").write_text("program: x\n")
    (tmp_path / "just.yaml").write_text("program: x\n#" + "x" * (MAX_FILE_SIZE - 13) + "\n")
    assert (tmp_path / "just.yaml").stat().st_size == MAX_FILE_SIZE
    with open(tmp_path / "huge.yaml", "wb") as f:
        f.write(b"program: x\n")
        f.truncate(64 * MAX_FILE_SIZE)  # sparse: 64 MiB on paper
    tracemalloc.start()
    try:
        loaded = load_jobs_dir(tmp_path, Templates())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sorted(loaded.jobs) == ["good", "just"]
    assert [(e.path, e.key_path, e.message) for e in loaded.errors] == [
        ("huge.yaml", "", "the file is larger than 1 MiB, the limit for a YAML file")
    ]
    assert peak < 8 * MAX_FILE_SIZE


@pytest.mark.timeout(10)
def test_a_fifo_is_refused_not_waited_on(tmp_path: Path) -> None:
    (tmp_path / "good.yaml").write_text("program: x\n")
    os.mkfifo(tmp_path / "pipe.yaml")
    loaded = load_jobs_dir(tmp_path, Templates())
    assert list(loaded.jobs) == ["good"]
    assert [(e.path, e.message) for e in loaded.errors] == [
        ("pipe.yaml", "cannot read: not a regular file")
    ]


def test_an_alias_bomb_fails_only_its_own_file(tmp_path: Path) -> None:
    (tmp_path / "good.yaml").write_text("program: x\n")
    (tmp_path / "bomb.yaml").write_text(
        "program: x\nmetadata:\n" + textwrap.indent(_laughs(9), "  ")
    )
    loaded = load_jobs_dir(tmp_path, Templates())
    assert list(loaded.jobs) == ["good"]
    [error] = loaded.errors
    assert error.path == "bomb.yaml"
    assert error.message.endswith("aliases expand to more than 10,000 values")


TRUE_WORDS = ["true", "True", "TRUE", "yes", "Yes", "YES", "on", "On", "ON"]
FALSE_WORDS = ["false", "False", "FALSE", "no", "No", "NO", "off", "Off", "OFF"]
WORDS = [(w, True) for w in TRUE_WORDS] + [(w, False) for w in FALSE_WORDS]


def job(text: str) -> Any:
    return parse_job("j", load_yaml(text), Templates())


@pytest.mark.parametrize(("word", "value"), WORDS)
def test_boolean_fields_take_yaml_1_1_words(word: str, value: bool) -> None:
    loaded = job(
        f"program: {{type: program, argv: [x], env: {{inherit: {word}}}}}\n"
        f"schedule: {{type: interval, interval: 60, enabled: {word}}}\n"
        f"condition: {{type: const, value: {word}}}\n"
        f"ad_hoc: {word}\n"
    )
    assert loaded.program.env_inherit is value
    assert loaded.schedules[0].enabled is value
    assert loaded.conditions == (ConstCondition(value),)
    assert loaded.ad_hoc is value
    assert job(f"program: {{type: no-op, success: {word}}}\n").program.success is value


@pytest.mark.parametrize(("word", "value"), WORDS)
def test_dependency_exist_takes_yaml_1_1_words(word: str, value: bool) -> None:
    loaded = job(f"program: x\ncondition: {{type: dependency, job_id: a, exist: {word}}}\n")
    [condition] = loaded.conditions
    assert isinstance(condition, DependencyCondition)
    assert (condition.exist is not None) is value


def test_yes_and_no_elsewhere_are_text() -> None:
    loaded = job(
        "params: [answer]\nprogram: x\n"
        "schedule: {type: interval, interval: 60, args: {answer: no}}\nlabels: [on, off]\n"
    )
    assert dict(loaded.schedules[0].args) == {"answer": "no"}
    assert loaded.labels == ("on", "off")


@pytest.mark.parametrize("value", ["maybe", "'y'", "1", "[yes]"])
def test_other_values_are_not_booleans(value: str) -> None:
    with pytest.raises(Invalid, match=r"schedule\.enabled: expected true or false \(or yes/no"):
        job(f"program: x\nschedule: {{type: interval, interval: 60, enabled: {value}}}\n")


def test_an_unquoted_date_in_a_text_field_is_its_text() -> None:
    """Job files of the earlier scheduler write `date: 2024-12-25` in args and argv."""
    text = (
        "params: [date]\nprogram: {type: program, argv: [report, 2024-12-25]}\n"
        "schedule: {type: interval, interval: 60, args: {date: 2024-12-25}}\n"
    )
    job = parse_job("j", load_yaml(text), Templates())
    assert job.program.argv == ("report", "2024-12-25")
    due = next(iter(job.schedules[0].due(0.0, job.params)))
    assert dict(due.args) == {"date": "2024-12-25"}
    with pytest.raises(Invalid, match="quote it"):
        parse_job(
            "k", load_yaml("program: {type: program, argv: [2027-01-01T00:00:00Z]}"), Templates()
        )
