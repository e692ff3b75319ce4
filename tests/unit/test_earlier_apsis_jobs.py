"""Job files written in every form the earlier Apsis accepts (from its docs and its
own job files, tests/compat/earlier_apsis/) load here with no error, and mean what
they meant there."""

from __future__ import annotations

import itertools
import signal
from pathlib import Path

import pytest

from apsis_common.states import State
from apsis_common.times import format_time, parse_time
from apsis_server.core.actions import ScheduleAction
from apsis_server.core.bound import BindError, BoundInternal, BoundNoOp, BoundProcess, bind
from apsis_server.core.conditions import (
    DependencyCondition,
    MaxRunningCondition,
    SkipDuplicateCondition,
)
from apsis_server.core.jobs import Job
from apsis_server.core.programs import Stop, Timeout
from apsis_server.core.schedules import Due, StopSchedule
from apsis_server.core.templates import Templates
from apsis_server.jobsdir import JobsLoad, load_jobs_dir

EARLIER = Path(__file__).parents[1] / "compat" / "earlier_apsis"
TEMPLATES = Templates()


@pytest.fixture(scope="module")
def loaded() -> JobsLoad:
    return load_jobs_dir(EARLIER, TEMPLATES)


def job(loaded: JobsLoad, job_id: str) -> Job:
    return loaded.jobs[job_id]


def dues(found: Job, start: str, n: int) -> list[Due]:
    [schedule] = found.schedules
    return list(itertools.islice(schedule.due(parse_time(start), found.params), n))


def when(due: Due) -> str:
    return (format_time(due.time) or "")[:19]


def test_every_file_loads_with_no_error_or_warning(loaded: JobsLoad) -> None:
    files = sorted(p for p in EARLIER.rglob("*.yaml"))
    assert len(files) >= 80
    assert [f"{e.path}: {e.key_path}: {e.message}" for e in loaded.errors] == []
    assert [f"{w.path}: {w.key_path}: {w.message}" for w in loaded.warnings] == []
    assert len(loaded.jobs) == len(files)


def test_time_shift_moves_the_time_and_keeps_the_args(loaded: JobsLoad) -> None:
    # 22:00 to 23:59:59 New York, every 5 minutes, two minutes early.
    found = job(loaded, "schedules/daily interval shift")
    first, second = dues(found, "2027-01-05T02:57:00Z", 2)  # Monday 21:57 in New York
    assert (when(first), dict(first.args)) == (
        "2027-01-05T02:58:00",
        {"date": "2027-01-04", "daytime": "22:00:00"},
    )
    assert (when(second), second.args["daytime"]) == ("2027-01-05T03:03:00", "22:05:00")
    found = job(loaded, "schedules/daily time shift")
    [due] = dues(found, "2027-01-04T00:00:00Z", 1)
    assert (when(due), dict(due.args)) == (
        "2027-01-04T20:58:00",
        {"date": "2027-01-04", "daytime": "16:00:00"},
    )


def test_shifts_keep_the_nominal_date(loaded: JobsLoad) -> None:
    # Mon-Fri, one calendar date on, one day back: Friday's run is on Sunday.
    found = job(loaded, "schedules/cal shift")
    runs = dues(found, "2027-01-07T21:00:00Z", 2)  # after Thursday's run
    assert [(when(d), d.args["date"]) for d in runs] == [
        ("2027-01-10T20:00:00", "2027-01-08"),
        ("2027-01-11T20:00:00", "2027-01-11"),
    ]
    # Mondays, one day back: on Sundays.
    [due] = dues(job(loaded, "schedules/date shift"), "2027-01-05T00:00:00Z", 1)
    assert (when(due), due.args["date"]) == ("2027-01-10T20:00:00", "2027-01-11")


def test_program_forms(loaded: JobsLoad) -> None:
    assert job(loaded, "programs/shell string").program.type == "shell"
    assert job(loaded, "programs/argv list").program.argv == ("/usr/bin/printf", "%s\n", "hello")
    assert job(loaded, "programs/python paths").program.type == "shell"
    assert job(loaded, "programs/python path process").program.type == "program"
    assert job(loaded, "programs/python path noop").program.duration == 2.0
    procstar = job(loaded, "programs/procstar").program
    assert (procstar.type, procstar.host) == ("program", "{{ group_id }}")
    shell = job(loaded, "programs/procstar shell").program
    assert (shell.type, shell.host, shell.user) == ("shell", "default", "batch")
    agent = job(loaded, "programs/agent").program
    assert agent.timeout == Timeout(60.0, int(signal.SIGKILL))
    archive = job(loaded, "internal/archive").program
    assert (archive.type, dict(archive.options)) == (
        "internal.archive",
        {"age": 60.0, "count": 4, "path": "/var/lib/apsis/archive.db"},
    )
    assert job(loaded, "internal/vacuum").program.type == "internal.vacuum"


def test_templates_in_values_are_expanded_when_bound(loaded: JobsLoad) -> None:
    def bound(job_id: str, **args: str) -> object:
        return bind(job(loaded, job_id).program, TEMPLATES, {**args, "args": args})

    assert bound("programs/noop duration template", duration="90s") == BoundNoOp(90.0)
    with pytest.raises(BindError, match=r"program\.duration"):
        bound("programs/noop duration template", duration="a while")
    process = bound("programs/timeout signal template", signal="SIGINT")
    assert isinstance(process, BoundProcess) and process.timeout is not None
    assert process.timeout.signal == int(signal.SIGINT)
    assert job(loaded, "programs/stop").program.stop == Stop(int(signal.SIGINT), "{{ grace }}")
    process = bound("programs/stop", grace="30")
    assert isinstance(process, BoundProcess) and process.stop_grace == 30.0
    archive = bound("internal/archive template", age="1 day", count="10")
    assert isinstance(archive, BoundInternal)
    assert (archive.options["age"], archive.options["count"]) == (86400.0, 10)


def test_job_keys(loaded: JobsLoad) -> None:
    assert job(loaded, "jobs/params mapping").params == ("date", "count")
    assert job(loaded, "jobs/params string").params == ("date",)
    assert job(loaded, "jobs/label string").labels == ("test",)
    metadata = job(loaded, "jobs/metadata")
    assert metadata.labels == ("test", "blue-team")
    assert (metadata.metadata["owner"], metadata.metadata["priority"]) == ("alex", "low")
    assert job(loaded, "schedules/no schedule").schedules == ()
    assert [s.enabled for s in job(loaded, "schedules/interval texts").schedules] == [
        False,
        False,
        True,
        False,
    ]
    assert isinstance(job(loaded, "schedules/stop daytime").schedules[0], StopSchedule)


def test_conditions_and_actions(loaded: JobsLoad) -> None:
    [one_state] = job(loaded, "conditions/dependency one state").conditions
    assert isinstance(one_state, DependencyCondition) and one_state.states == (State.FAILURE,)
    [default] = job(loaded, "conditions/max running default").conditions
    assert isinstance(default, MaxRunningCondition) and default.count == 1
    [skip] = job(loaded, "conditions/skip duplicate states").conditions
    assert isinstance(skip, SkipDuplicateCondition)
    assert (skip.check_states, skip.target_state) == ((State.FAILURE, State.ERROR), State.ERROR)
    [successor] = job(loaded, "actions/successor").actions
    assert successor == ScheduleAction("actions/second", {}, (State.SUCCESS,))
    first, second, third = job(loaded, "actions/schedule").actions
    assert isinstance(first, ScheduleAction) and first.job_id == "actions/second"
    assert isinstance(second, ScheduleAction) and second.states == (State.FAILURE, State.ERROR)
    assert isinstance(third, ScheduleAction) and third.args == {}
