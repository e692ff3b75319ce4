"""Job files: the examples load, every part parses to the right values, and check-jobs."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from apsis_common.states import State
from apsis_server.checkjobs import main as check_jobs
from apsis_server.core.actions import EmailAction, RetryAction, ScheduleAction, WebhookAction
from apsis_server.core.catchup import CatchUp, CatchUpPolicy
from apsis_server.core.conditions import (
    ConstCondition,
    DependencyCondition,
    MaxRunningCondition,
    SkipDuplicateCondition,
)
from apsis_server.core.fields import Invalid
from apsis_server.core.jobs import Job, load_yaml, parse_job
from apsis_server.core.programs import Stop, Timeout, parse_program
from apsis_server.core.schedules import StopSchedule
from apsis_server.core.templates import Templates
from apsis_server.jobsdir import load_calendars_dir, load_jobs_dir

EXAMPLES = Path(__file__).parents[2] / "examples" / "jobs"


def job(text: str, job_id: str = "j") -> Job:
    return parse_job(job_id, load_yaml(text), Templates())


def test_every_example_job_loads() -> None:
    loaded = load_jobs_dir(EXAMPLES, Templates())
    assert loaded.errors == []
    assert len(loaded.jobs) == len(list(EXAMPLES.rglob("*.yaml"))) >= 11
    assert "ops/remote" in loaded.jobs and loaded.jobs["ops/remote"].program.host == "workers"
    market = loaded.jobs["ops/market hours"].schedules[0]
    assert isinstance(market, StopSchedule)


def test_unquoted_daytime_is_noon_not_base_60() -> None:
    loaded = job("program: x\nschedule: {type: daily, daytime: 12:00, tz: UTC}\n")
    assert loaded.schedules[0].text() == "every day at 12:00:00 UTC"


@pytest.mark.parametrize(
    ("form", "expected"),
    [
        ("echo hi", {"type": "shell", "command": "echo hi"}),
        (["/bin/true", "x"], {"type": "program", "argv": ("/bin/true", "x")}),
        ({"type": "no-op", "duration": "2s"}, {"type": "no-op", "duration": 2.0}),
        (
            {"type": "agent-shell", "command": "x", "sudo_user": "bob", "group_id": "g"},
            {"type": "shell", "user": "bob", "host": "g"},
        ),
        (
            {"type": "procstar", "argv": ["a"], "group_id": "workers"},
            {"type": "program", "host": "workers"},
        ),
        ({"type": "procstar-shell", "command": "x"}, {"type": "shell"}),
        ({"type": "agent", "argv": ["a"]}, {"type": "program"}),
        ({"type": "apsis.program.process.ProcessProgram", "argv": ["a"]}, {"type": "program"}),
        (
            {"type": "apsis.program.process.ShellCommandProgram", "command": "x"},
            {"type": "shell"},
        ),
        ({"type": "apsis.program.noop.NoOpProgram"}, {"type": "no-op"}),
        (
            {
                "type": "apsis.program.internal.archive.ArchiveProgram",
                "age": "30 days",
                "count": 10,
            },
            {"type": "internal.archive", "options": {"age": 2592000.0, "count": 10}},
        ),
        ({"type": "internal.vacuum"}, {"type": "internal.vacuum", "options": {}}),
        ({"type": "internal.stats", "path": "/tmp/s"}, {"options": {"path": "/tmp/s"}}),
        (
            {
                "type": "shell",
                "command": "x",
                "timeout": {"duration": "1h", "signal": "INT"},
                "stop": {"signal": 15, "grace_period": "30s"},
                "env": {"inherit": False, "vars": {"A": 1}},
                "cwd": "/tmp",
                "user": "u",
            },
            {
                "timeout": Timeout(3600.0, int(signal.SIGINT)),
                "stop": Stop(int(signal.SIGTERM), 30.0),
                "env_inherit": False,
                "env": {"A": "1"},
                "cwd": "/tmp",
                "user": "u",
            },
        ),
        ({"type": "shell", "command": "x", "timeout": 90}, {"timeout": Timeout(90.0)}),
    ],
)
def test_programs(form: Any, expected: dict[str, Any]) -> None:
    program = parse_program(form)
    assert {k: getattr(program, k) for k in expected} == expected


def test_conditions_parse_to_values() -> None:
    loaded = job(
        """
params: [date]
program: x
conditions:
  - {type: dependency, job_id: "up/{{ date }}", args: {date: "{{ date }}"}}
  - {type: dependency, job_id: b, states: [success, skipped], exist: true}
  - {type: dependency, job_id: c, states: failure, exist: [running, failure]}
  - {type: max_running, count: 2, per: job}
  - {type: max_running}
  - {type: const, value: false}
  - {type: skip_duplicate}
  - {type: skip_duplicate, check_states: [running], target_state: error}
"""
    )
    assert loaded.conditions == (
        DependencyCondition("up/{{ date }}", {"date": "{{ date }}"}),
        DependencyCondition(
            "b",
            states=(State.SUCCESS, State.SKIPPED),
            exist=(
                State.NEW,
                State.SCHEDULED,
                State.WAITING,
                State.STARTING,
                State.RUNNING,
                State.STOPPING,
                State.SUCCESS,
                State.SKIPPED,
            ),
        ),
        DependencyCondition("c", states=(State.FAILURE,), exist=(State.RUNNING, State.FAILURE)),
        MaxRunningCondition(2, "job"),
        MaxRunningCondition(1, "args"),
        ConstCondition(False),
        SkipDuplicateCondition(),
        SkipDuplicateCondition((State.RUNNING,), State.ERROR),
    )


def test_actions_and_successors_parse_to_values() -> None:
    loaded = job(
        """
program: x
actions:
  - {type: schedule, job_id: b, args: {x: "1"}, if: {states: [success, failure]}}
  - {type: schedule, job_id: c}
  - type: retry
    max: 3
    delay: 1 min
    backoff: 2
    max_delay: 10 min
    on: {states: [failure, error], exit_codes: [1, 2]}
  - {type: retry}
  - {type: webhook, url: "https://hooks.example.com/x", states: [error]}
  - {type: email, to: ops@example.com}
successors:
  - d
  - {job_id: e, args: {y: "2"}}
"""
    )
    assert loaded.actions == (
        ScheduleAction("b", {"x": "1"}, (State.SUCCESS, State.FAILURE)),
        ScheduleAction("c"),
        RetryAction(3, 60.0, 2.0, 600.0, (State.FAILURE, State.ERROR), (1, 2)),
        RetryAction(),
        WebhookAction("https://hooks.example.com/x", (State.ERROR,)),
        EmailAction(("ops@example.com",)),
        ScheduleAction("d", states=(State.SUCCESS,)),
        ScheduleAction("e", {"y": "2"}, (State.SUCCESS,)),
    )
    assert loaded.actions[2].type == "retry"


def test_job_level_keys() -> None:
    loaded = job(
        """
job_id: a/b
metadata: {description: "Does *things*.", labels: [x, y], owner: me}
labels: [y, z]
program: x
catch_up: {policy: all, window: 2h, max: 5}
waiting: {max_time: 30 min}
""",
        job_id="a/b",
    )
    assert loaded.labels == ("y", "z", "x")
    assert loaded.description == "Does *things*."
    assert loaded.metadata["owner"] == "me"
    assert loaded.catch_up == CatchUp(CatchUpPolicy.ALL, 7200.0, 5)
    assert (loaded.waiting_max_time, loaded.has_waiting_limit) == (1800.0, True)
    short = job("program: x\ncatch_up: none\nwaiting: {max_time: null}\n")
    assert short.catch_up == CatchUp(CatchUpPolicy.NONE)
    assert (short.waiting_max_time, short.has_waiting_limit) == (None, True)
    default = job("program: x\n")
    assert (default.catch_up, default.has_waiting_limit) == (None, False)


def test_check_jobs_examples_pass(capsys: pytest.CaptureFixture[str]) -> None:
    assert check_jobs([str(EXAMPLES)]) == 0
    assert "0 errors" in capsys.readouterr().out


def test_check_jobs_lists_errors_and_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "good.yaml").write_text("program: echo ok\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "bad.yaml").write_text(
        "program: {type: shell}\nschedule: {type: daily, daytime: '9am'}\n"
    )
    assert check_jobs([str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "sub/bad.yaml: program.command: missing" in out
    assert "sub/bad.yaml: schedule.daytime: expected a daytime" in out
    assert "1 jobs loaded, 2 errors" in out
    assert check_jobs([]) == 2


def test_calendars_dir_and_check_jobs_with_calendars(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cals = tmp_path / "calendars"
    cals.mkdir()
    (cals / "nyse.yaml").write_text(
        "weekdays: Mon-Fri\nholidays:\n  - 2024-01-01\n  - 2024-12-25 Christmas\n"
    )
    (cals / "paydays.cal").write_text("START 2024-01-01\nSTOP 2025-01-01\n\n2024-01-31\n")
    (cals / "broken.cal").write_text("START 2024-01-01\nnot-a-date\n")
    loaded = load_calendars_dir(cals)
    assert sorted(loaded.calendars) == ["nyse", "paydays"]
    assert [(e.path, e.key_path) for e in loaded.errors] == [("broken.cal", "line 2")]
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (jobs / "a.yaml").write_text(
        "program: x\nschedule: {type: daily, daytime: '09:00', calendar: paydays}\n"
    )
    assert check_jobs([str(jobs)]) == 1
    assert "unknown calendar 'paydays'" in capsys.readouterr().out
    (cals / "broken.cal").unlink()
    assert check_jobs(["--calendars", str(cals), str(jobs)]) == 0


def test_references_to_missing_jobs_and_params_are_warnings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a.yaml").write_text("params: [date]\nprogram: x\n")
    (tmp_path / "b.yaml").write_text(
        """
params: [date]
program: x
condition: {type: dependency, job_id: a, args: {day: "1"}}
action:
  - {type: schedule, job_id: gone}
  - {type: schedule, job_id: "a/{{ date }}"}
successors: [broken]
"""
    )
    (tmp_path / "broken.yaml").write_text("program: {type: nope}\n")
    loaded = load_jobs_dir(tmp_path, Templates())
    assert [(w.job_id, w.key_path, w.message) for w in loaded.warnings] == [
        ("b", "condition[0].args", "job 'a' has no param(s) day"),
        ("b", "action[0]", "no job 'gone'"),
    ]
    assert check_jobs([str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "b.yaml: action[0]: warning: no job 'gone'" in out
    assert "2 jobs loaded, 1 errors, 2 warnings" in out


def test_schedule_action_if_without_states_means_any_finished_state() -> None:
    loaded = job("program: x\naction: {type: schedule, job_id: b, if: {}}\n")
    action = loaded.actions[0]
    assert isinstance(action, ScheduleAction)
    assert action.states == (State.SUCCESS, State.FAILURE, State.ERROR, State.SKIPPED)


def test_the_adhoc_job_id_is_kept_for_programs_given_directly() -> None:
    with pytest.raises(Invalid, match="kept for ad-hoc runs of programs"):
        parse_job("adhoc", load_yaml("program: 'true'"), Templates())
    assert parse_job("adhoc/nightly", load_yaml("program: 'true'"), Templates()).job_id
