"""Malformed job files: each is rejected with the key path and what was expected."""

from __future__ import annotations

from dataclasses import replace

import pytest

from apsis_common import protocol as p
from apsis_common.states import State
from apsis_server.core.bound import BoundProcess, bind, from_plain, to_plain
from apsis_server.core.calendars import parse_calendar_data
from apsis_server.core.conditions import DependencyCondition
from apsis_server.core.fields import Invalid
from apsis_server.core.jobs import load_yaml, parse_job
from apsis_server.core.programs import Resources
from apsis_server.core.runs import Run
from apsis_server.core.templates import Templates
from apsis_server.engine.procs import proc_spec

# (name, job file text, key path, part of the message)
BAD: list[tuple[str, str, str, str]] = [
    ("not a mapping", "- a\n- b\n", "", "expected a mapping of job keys, got a list"),
    ("yaml syntax", "program: [echo\n", "", "YAML syntax error: line 2"),
    ("no program", "params: [a]\n", "program", "missing"),
    (
        "unknown top-level key",
        "program: x\nschedul: {type: interval}\n",
        "schedul",
        "unknown key (expected one of: action, actions, ad_hoc, catch_up, condition, conditions,"
        " job_id, labels, metadata, params, program, schedule, successors, waiting)",
    ),
    ("bad param name", "params: [ok, 2bad]\nprogram: x\n", "params[1]", "not a valid name"),
    ("duplicate params", "params: [a, a]\nprogram: x\n", "params", "duplicate param names"),
    (
        "unknown program type",
        "program: {type: shel, command: x}\n",
        "program.type",
        "unknown program type 'shel'",
    ),
    (
        "arbitrary python path",
        "program: {type: os.system, command: x}\n",
        "program.type",
        "unknown program type 'os.system'",
    ),
    ("shell without command", "program: {type: shell}\n", "program.command", "missing"),
    ("empty argv", "program: {type: program, argv: []}\n", "program.argv", "non-empty argv"),
    (
        "unknown program key",
        "program: {type: shell, command: x, hots: a}\n",
        "program.hots",
        "unknown key (expected one of: command, cwd, env, host, resources, stderr, stop, timeout,"
        " type, user)",
    ),
    (
        "unknown env key",
        "program: {type: program, argv: [x], env: {inheirt: false}}\n",
        "program.env.inheirt",
        "unknown key (expected one of: inherit, vars)",
    ),
    (
        "unknown stop schedule key",
        "program: x\nschedule:\n  start: {type: interval, interval: 60}\n"
        "  stop: {type: duration, duration: 5m, typo: 1}\n",
        "schedule.stop.typo",
        "unknown key (expected one of: duration, type)",
    ),
    (
        "unknown crontab key",
        "program: x\nschedule: {type: crontab, minute: 5, wekday: 1}\n",
        "schedule.wekday",
        "unknown key (expected one of: args, day, dst_gap, dst_repeat, enabled, end_date, expr,"
        " hour, jitter, minute, month, second, start_date, type, tz, weekday)",
    ),
    (
        "user template unknown name",
        "program: {type: shell, command: x, user: '{{ nobody }}'}\n",
        "program.user",
        "unknown name(s): nobody",
    ),
    (
        "timeout template unknown name",
        "program: {type: shell, command: x, timeout: {duration: '{{ t }}'}}\n",
        "program.timeout.duration",
        "unknown name(s): t",
    ),
    (
        "timeout template syntax",
        "params: [t]\nprogram: {type: shell, command: x, timeout: '{{ t + }}'}\n",
        "program.timeout.duration",
        "bad template",
    ),
    (
        "bad timeout duration",
        "program: {type: shell, command: x, timeout: {duration: 10 parsecs}}\n",
        "program.timeout.duration",
        "unknown duration unit 'parsecs'",
    ),
    (
        "bad stop signal",
        "program: {type: shell, command: x, stop: {signal: SIGFOO}}\n",
        "program.stop.signal",
        "expected a signal like SIGTERM",
    ),
    (
        "env vars not a mapping",
        "program: {type: shell, command: x, env: {vars: [A]}}\n",
        "program.env.vars",
        "expected a mapping",
    ),
    (
        "template unknown name",
        "program: echo {{ dat }}\nparams: [date]\n",
        "program.command",
        "unknown name(s): dat",
    ),
    (
        "template syntax",
        "program: echo {{ date + }}\nparams: [date]\n",
        "program.command",
        "bad template",
    ),
    (
        "schedule unknown type",
        "program: x\nschedule: {type: weekly}\n",
        "schedule.type",
        "unknown schedule type 'weekly'",
    ),
    ("schedule without type", "program: x\nschedule: {interval: 5}\n", "schedule.type", "missing"),
    (
        "interval zero",
        "program: x\nschedule: {type: interval, interval: 0}\n",
        "schedule.interval",
        "expected a positive duration",
    ),
    (
        "bad time zone",
        "program: x\nschedule: {type: daily, daytime: '09:00', tz: Mars/Olympus}\n",
        "schedule.tz",
        "unknown time zone 'Mars/Olympus'",
    ),
    (
        "bad daytime",
        "program: x\nschedule: {type: daily, daytime: '25:00'}\n",
        "schedule.daytime",
        "expected a daytime like 09:30",
    ),
    (
        "bad daytime in a list",
        "program: x\nschedule: [{type: daily, daytime: ['09:00', noon]}]\n",
        "schedule[0].daytime[1]",
        "expected a daytime",
    ),
    (
        "unknown calendar",
        "program: x\nschedule: {type: daily, daytime: '09:00', calendar: Moonday}\n",
        "schedule.calendar",
        "unknown calendar 'Moonday'",
    ),
    (
        "cal_shift not an integer",
        "program: x\nschedule: {type: daily, daytime: '09:00', cal_shift: soon}\n",
        "schedule.cal_shift",
        "expected an integer",
    ),
    (
        "enabled not a boolean",
        "program: x\nschedule: {type: interval, interval: 60, enabled: maybe}\n",
        "schedule.enabled",
        "expected true or false (or yes/no, on/off), got 'maybe'",
    ),
    (
        "start_date that does not exist, unquoted",
        "program: x\nschedule: {type: interval, interval: 60, start_date: 2024-13-01}\n",
        "schedule.start_date",
        "expected a date like 2027-01-31, got '2024-13-01'",
    ),
    (
        "end_date that does not exist, unquoted",
        "program: x\nschedule: {type: interval, interval: 60, end_date: 2023-02-29}\n",
        "schedule.end_date",
        "expected a date like 2027-01-31, got '2023-02-29'",
    ),
    (
        "explicit time that does not exist, unquoted",
        "program: x\nschedule:\n"
        "  {type: explicit, times: [2027-01-01T00:00:00Z, 2027-02-30T00:00:00Z]}\n",
        "schedule.times[1]",
        "expected an ISO 8601 time like 2027-01-01T00:00:00Z, got '2027-02-30T00:00:00Z'",
    ),
    (
        "explicit time with a bad hour, unquoted",
        "program: x\nschedule: {type: explicit, times: 2027-01-01T24:30:00Z}\n",
        "schedule.times[0]",
        "expected an ISO 8601 time",
    ),
    (
        "bad dst policy",
        "program: x\nschedule: {type: daily, daytime: '09:00', dst_gap: later}\n",
        "schedule.dst_gap",
        "expected 'shift' or 'skip'",
    ),
    (
        "explicit time without zone",
        "program: x\nschedule: {type: explicit, times: ['2027-01-01T00:00:00']}\n",
        "schedule.times[0]",
        "has no time zone",
    ),
    (
        "crontab wrong field count",
        "program: x\nschedule: {type: crontab, expr: '* * *'}\n",
        "schedule.expr",
        "expected 5 cron fields",
    ),
    (
        "crontab out of range",
        "program: x\nschedule: {type: crontab, expr: '61 * * * *'}\n",
        "schedule.expr",
        "minute 61 out of range 0-59",
    ),
    (
        "crontab never matches",
        "program: x\nschedule: {type: crontab, expr: '0 0 31 2 *'}\n",
        "schedule.expr",
        "never matches",
    ),
    (
        "crontab expr and fields",
        "program: x\nschedule: {type: crontab, expr: '* * * * *', hour: 3}\n",
        "schedule.expr",
        "give either expr or the fields",
    ),
    (
        "daily-interval stop before start",
        "program: x\nschedule:\n"
        "  {type: daily-interval, start: '10:00', stop: '09:00', interval: 60}\n",
        "schedule.stop",
        "stop is not after start",
    ),
    (
        "schedule arg not a param",
        "params: [a]\nprogram: x\nschedule: {type: interval, interval: 60, args: {a: 1, b: 2}}\n",
        "schedule.args.b",
        "'b' is not a param of the job",
    ),
    (
        "schedule does not give a param",
        "params: [region]\nprogram: x\nschedule: {type: interval, interval: 60}\n",
        "schedule",
        "no value for param(s) region",
    ),
    (
        "schedule arg template unknown name",
        "params: [a]\nprogram: x\n"
        "schedule: {type: interval, interval: 60, args: {a: '{{ nope }}'}}\n",
        "schedule.args.a",
        "unknown name(s): nope",
    ),
    (
        "end_date before start_date",
        "program: x\nschedule:\n"
        "  {type: interval, interval: 60, start_date: 2024-02-01, end_date: 2024-01-01}\n",
        "schedule.end_date",
        "before start_date",
    ),
    (
        "bad stop schedule type",
        "program: x\nschedule: {start: {type: interval, interval: 60}, stop: {type: never}}\n",
        "schedule.stop.type",
        "expected 'duration' or 'daytime'",
    ),
    (
        "bad jitter",
        "program: x\nschedule: {type: interval, interval: 60, jitter: lots}\n",
        "schedule.jitter",
        "expected a duration",
    ),
    (
        "unknown condition type",
        "program: x\ncondition: {type: sometimes}\n",
        "condition.type",
        "unknown condition type 'sometimes'",
    ),
    (
        "dependency without job_id",
        "program: x\nconditions: [{type: dependency}]\n",
        "conditions[0].job_id",
        "missing",
    ),
    (
        "bad state name",
        "program: x\ncondition: {type: dependency, job_id: a, states: [succeeded]}\n",
        "condition.states[0]",
        "expected a run state",
    ),
    (
        "max_running count zero",
        "program: x\ncondition: {type: max_running, count: 0}\n",
        "condition.count",
        "expected a positive integer",
    ),
    (
        "max_running per",
        "program: x\ncondition: {type: max_running, per: host}\n",
        "condition.per",
        "expected 'args' or 'job'",
    ),
    (
        "skip_duplicate unfinished target",
        "program: x\ncondition: {type: skip_duplicate, target_state: waiting}\n",
        "condition.target_state",
        "expected a finished state",
    ),
    (
        "condition and conditions",
        "program: x\ncondition: {type: const}\nconditions: [{type: const}]\n",
        "conditions",
        "not both",
    ),
    (
        "condition template unknown name",
        "program: x\ncondition: {type: dependency, job_id: 'a/{{ region }}'}\n",
        "condition[0].job_id",
        "unknown name(s): region",
    ),
    (
        "unknown action type",
        "program: x\naction: {type: page}\n",
        "action.type",
        "unknown action type 'page'",
    ),
    (
        "action if with running state",
        "program: x\naction: {type: schedule, job_id: b, if: {states: [running]}}\n",
        "action.if.states",
        "expected finished states, got running",
    ),
    (
        "retry backoff below one",
        "program: x\naction: {type: retry, max: 3, backoff: 0.5}\n",
        "action.backoff",
        "at least 1",
    ),
    (
        "retry exit code",
        "program: x\naction: {type: retry, on: {exit_codes: [one]}}\n",
        "action.on.exit_codes[0]",
        "expected an integer",
    ),
    (
        "webhook url",
        "program: x\naction: {type: webhook, url: 'ftp://x'}\n",
        "action.url",
        "expected an http:// or https:// URL",
    ),
    (
        "email address",
        "program: x\naction: {type: email, to: [ops]}\n",
        "action.to[0]",
        "expected an email address",
    ),
    (
        "successor without job_id",
        "program: x\nsuccessors: [{args: {a: 1}}]\n",
        "successors[0].job_id",
        "missing",
    ),
    (
        "catch_up policy",
        "program: x\ncatch_up: {policy: some}\n",
        "catch_up.policy",
        "expected 'all' or 'latest' or 'none'",
    ),
    ("waiting without max_time", "program: x\nwaiting: {}\n", "waiting.max_time", "missing"),
    ("job_id mismatch", "job_id: other\nprogram: x\n", "job_id", "does not match the path"),
    ("labels not strings", "program: x\nlabels: [{a: 1}]\n", "labels[0]", "expected a string"),
    (
        "resources not a mapping",
        "program: {type: shell, command: x, resources: 1 GiB}\n",
        "program.resources",
        "expected a mapping",
    ),
    (
        "memory not a size",
        "program: {type: shell, command: x, resources: {memory: lots}}\n",
        "program.resources.memory",
        "expected a size like 64 MiB, got 'lots'",
    ),
    (
        "memory under a MiB",
        "program: {type: shell, command: x, resources: {memory: 512 KiB}}\n",
        "program.resources.memory",
        "expected at least 1 MiB",
    ),
    (
        "cpu not a number",
        "program: {type: program, argv: [x], resources: {cpu: two}}\n",
        "program.resources.cpu",
        "expected a number of CPUs like 1.5, got 'two'",
    ),
    (
        "no cpu at all",
        "program: {type: program, argv: [x], resources: {cpu: 0}}\n",
        "program.resources.cpu",
        "expected a number of CPUs",
    ),
    (
        "pids not positive",
        "program: {type: program, argv: [x], resources: {pids: 0}}\n",
        "program.resources.pids",
        "expected a positive integer",
    ),
    (
        "unknown resources key",
        "program: {type: program, argv: [x], resources: {mem: 1 GiB}}\n",
        "program.resources.mem",
        "unknown key (expected one of: cpu, memory, pids)",
    ),
]


@pytest.mark.parametrize(
    ("text", "key_path", "message"), [b[1:] for b in BAD], ids=[b[0] for b in BAD]
)
def test_malformed_job_is_rejected(text: str, key_path: str, message: str) -> None:
    with pytest.raises(Invalid) as info:
        parse_job("test/job", load_yaml(text), Templates())
    found = [(e.key_path, e.message) for e in info.value.errors]
    assert any(path == key_path and message in text for path, text in found), found


@pytest.mark.parametrize("text", [b[1] for b in BAD], ids=[b[0] for b in BAD])
def test_no_error_is_reported_twice(text: str) -> None:
    with pytest.raises(Invalid) as info:
        parse_job("test/job", load_yaml(text), Templates())
    found = [(e.key_path, e.message) for e in info.value.errors]
    assert len(found) == len(set(found)), found


def test_a_cron_error_is_reported_once_beside_the_others() -> None:
    text = (
        "program: x\n"
        "schedule: {type: crontab, expr: '61 * * * *', tz: Nowhere/City, jitter: lots}\n"
    )
    with pytest.raises(Invalid) as info:
        parse_job("j", load_yaml(text), Templates())
    assert [(e.key_path, e.message) for e in info.value.errors] == [
        ("schedule.jitter", "expected a duration like '30s' or '10 min', got 'lots'"),
        ("schedule.expr", "minute 61 out of range 0-59"),
        ("schedule.tz", "unknown time zone 'Nowhere/City'"),
    ]


def test_condition_and_conditions_is_one_error() -> None:
    text = "program: x\ncondition: {type: const}\nconditions: [{type: const}]\n"
    with pytest.raises(Invalid) as info:
        parse_job("j", load_yaml(text), Templates())
    assert [str(e) for e in info.value.errors] == [
        "conditions: give 'condition' or 'conditions', not both"
    ]


def test_count_of_malformed_cases() -> None:
    assert len({b[0] for b in BAD}) == len(BAD) >= 30


def test_all_errors_of_a_file_are_reported_together() -> None:
    text = """
params: [date]
program: {type: shell, command: "echo {{ nope }}", timeout: {duration: forever}}
schedule:
  - {type: daily, daytime: "09:00", tz: Nowhere/City}
  - {type: interval, interval: -5}
condition: {type: max_running, count: zero}
action: {type: webhook, url: "gopher://x"}
extra: 1
"""
    with pytest.raises(Invalid) as info:
        parse_job("j", load_yaml(text), Templates())
    paths = {e.key_path for e in info.value.errors}
    assert {
        "program.timeout.duration",
        "schedule[0].tz",
        "schedule[1].interval",
        "condition.count",
        "action.url",
        "extra",
    } <= paths


def test_named_calendars_resolve_only_when_given() -> None:
    text = "program: x\nschedule: {type: daily, daytime: '09:00', calendar: nyse}\n"
    with pytest.raises(Invalid, match="unknown calendar 'nyse'"):
        parse_job("j", load_yaml(text), Templates())
    nyse = parse_calendar_data("nyse", {"holidays": ["2024-12-25"]})
    job = parse_job("j", load_yaml(text), Templates(), calendars={"nyse": nyse})
    assert job.schedules[0].text().startswith("nyse at 09:00:00")


@pytest.mark.parametrize(
    ("data", "key_path", "message"),
    [
        ({"weekdays": "Funday", "holidays": ["2024-01-01"]}, "weekdays", "expected weekdays"),
        ({"holidays": ["2024-13-01"]}, "holidays[0]", "expected a date"),
        ({"holidays": "2024-01-01"}, "holidays", "expected a list of dates"),
        ({"holidays": ["2024-01-01"], "stop": "2023-01-01"}, "stop", "not after start"),
        (
            {"holiday": ["2024-01-01"]},
            "holiday",
            "unknown key (expected one of: description, holidays, start, stop, weekdays)",
        ),
        ({"weekdays": "Mon-Fri"}, "", "no dates and no START/STOP range"),
    ],
)
def test_malformed_calendar_files(data: object, key_path: str, message: str) -> None:
    with pytest.raises(Invalid) as info:
        parse_calendar_data("c", data)
    assert any(e.key_path == key_path and message in e.message for e in info.value.errors), (
        info.value.errors
    )


@pytest.mark.parametrize(
    ("text", "key_path", "message"),
    [
        ("holidays: [2024-02-30]\n", "holidays[0]", "got '2024-02-30'"),
        ("holidays: [2024-01-01]\nstop: 2025-13-01\n", "stop", "got '2025-13-01'"),
    ],
)
def test_calendar_file_dates_that_do_not_exist(text: str, key_path: str, message: str) -> None:
    with pytest.raises(Invalid) as info:
        parse_calendar_data("c", load_yaml(text))
    expected = f"expected a date like 2027-01-31, {message}"
    assert [(e.key_path, e.message) for e in info.value.errors] == [(key_path, expected)]


# (name, job file text, key path, part of the message): a template that would not
# compile is an error of its field wherever it is, never another exception.
BAD_TEMPLATE_FIELDS: list[tuple[str, str, str, str]] = [
    (
        "unknown filter in the command",
        'params: [name]\nprogram: {type: shell, command: "echo {{ name | nosuchfilter }}"}\n',
        "program.command",
        "no filter named 'nosuchfilter'",
    ),
    (
        "unknown test in argv",
        "params: [n]\nprogram: [echo, '{{ n is nosuchtest }}']\n",
        "program.argv[1]",
        "no test named 'nosuchtest'",
    ),
    (
        "unknown filter in an if block",
        "params: [n]\nprogram: 'echo {% if n %}{{ n | nosuchfilter }}{% endif %}'\n",
        "program.command",
        "no filter named 'nosuchfilter'",
    ),
    (
        "unknown filter in an env var",
        "program: {type: shell, command: x, env: {vars: {A: '{{ job_id | nope }}'}}}\n",
        "program.env.vars.A",
        "no filter named 'nope'",
    ),
    (
        "unknown filter in the timeout",
        "program: {type: shell, command: x, timeout: '{{ 5 | nope }} min'}\n",
        "program.timeout.duration",
        "no filter named 'nope'",
    ),
    (
        "unknown filter in an internal program's path",
        "program: {type: internal.stats, path: '/tmp/{{ run_id | nope }}'}\n",
        "program.path",
        "no filter named 'nope'",
    ),
    (
        "syntax error in a host",
        "program: {type: shell, command: x, host: '{{ job_id }'}\n",
        "program.host",
        "bad template",
    ),
    (
        "unknown filter in a dependency's args",
        "params: [d]\nprogram: x\n"
        "condition: {type: dependency, job_id: a, args: {d: '{{ d | nope }}'}}\n",
        "condition[0].args.d",
        "no filter named 'nope'",
    ),
    (
        "unknown test in a max_running count",
        "program: x\nconditions: [{type: const}, {type: max_running, count: '{{ 1 is nope }}'}]\n",
        "condition[1].count",
        "no test named 'nope'",
    ),
    (
        "unknown filter in a schedule action",
        "program: x\naction: {type: schedule, job_id: '{{ job_id | nope }}'}\n",
        "action[0].job_id",
        "no filter named 'nope'",
    ),
    (
        "unknown filter in a webhook url",
        "program: x\naction: {type: webhook, url: 'http://x/{{ run_id | nope }}'}\n",
        "action[0].url",
        "no filter named 'nope'",
    ),
    (
        "unknown name in an email address",
        "program: x\naction: {type: email, to: ['{{ who }}@example.com']}\n",
        "action[0].to[0]",
        "unknown name(s): who",
    ),
    (
        "unknown filter in a successor's args",
        "params: [d]\nprogram: x\nsuccessors: [{job_id: b, args: {d: '{{ d | nope }}'}}]\n",
        "action[0].args.d",
        "no filter named 'nope'",
    ),
    (
        "unknown filter in a schedule arg",
        "params: [a]\nprogram: x\n"
        "schedule: {type: interval, interval: 60, args: {a: '{{ job_id | nope }}'}}\n",
        "schedule.args.a",
        "no filter named 'nope'",
    ),
    (
        "unknown test in a schedule arg of a list",
        "params: [a]\nprogram: x\n"
        "schedule: [{type: interval, interval: 60, args: {a: '{{ 1 is nope }}'}}]\n",
        "schedule[0].args.a",
        "no test named 'nope'",
    ),
]


@pytest.mark.parametrize(
    ("text", "key_path", "message"),
    [b[1:] for b in BAD_TEMPLATE_FIELDS],
    ids=[b[0] for b in BAD_TEMPLATE_FIELDS],
)
def test_a_template_that_does_not_compile_is_its_fields_error(
    text: str, key_path: str, message: str
) -> None:
    with pytest.raises(Invalid) as info:
        parse_job("j", load_yaml(text), Templates())
    [error] = info.value.errors
    assert error.key_path == key_path
    assert message in error.message, error.message


def test_resources_reach_the_agent() -> None:
    """`resources` is parsed, bound, kept in the stored form, and sent to the agent."""
    text = "program: {type: shell, command: x, resources: {memory: 1 GiB, cpu: 1.5, pids: 1000}}"
    job = parse_job("j", load_yaml(text), Templates())
    limits = Resources(memory=1 << 30, cpu=1.5, pids=1000)
    assert job.program.resources == limits
    assert job.program.to_plain()["resources"] == {"memory": 1 << 30, "cpu": 1.5, "pids": 1000}
    bound = bind(job.program, Templates(), {"run_id": "r1", "job_id": "j"})
    assert isinstance(bound, BoundProcess) and bound.resources == limits
    assert from_plain(to_plain(bound)) == bound
    assert "resources" not in to_plain(replace(bound, resources=None))  # stored as before
    run = Run(run_id="r1", job_id="j", args={}, state=State.RUNNING, program=bound)
    spec = proc_spec(run, bound)
    assert spec.resources == p.Resources(memory=1 << 30, cpu=1.5, pids=1000)
    assert proc_spec(run, replace(bound, resources=None)).resources is None
    empty = "program: {type: shell, command: x, resources: {}}\n"
    partial = parse_job("j", load_yaml(empty), Templates())
    assert partial.program.resources is None


def test_params_as_a_mapping_as_the_earlier_apsis_took_them() -> None:
    text = "params: {date: {type: date}, region: null}\nprogram: echo {{ date }} {{ region }}\n"
    assert parse_job("j", load_yaml(text), Templates()).params == ("date", "region")
    with pytest.raises(Invalid, match="not a valid name"):
        parse_job("j", load_yaml("params: {'not ok': 1}\nprogram: echo\n"), Templates())


@pytest.mark.parametrize(
    ("extra", "key", "message"),
    [
        ("max_wait: -5", "condition.max_wait", ""),
        ("max_wait: soon", "condition.max_wait", ""),
        ("on_timeout: fail", "condition.on_timeout", "expected 'error' or 'skip'"),
    ],
)
def test_bad_max_wait_or_on_timeout(extra: str, key: str, message: str) -> None:
    text = f"program: 'true'\ncondition: {{type: dependency, job_id: a, {extra}}}\n"
    with pytest.raises(Invalid) as exc:
        parse_job("j", load_yaml(text), Templates())
    assert [e.key_path for e in exc.value.errors] == [key]
    assert message in exc.value.errors[0].message


def test_max_wait_and_on_timeout_are_read() -> None:
    written = "{type: dependency, job_id: a, max_wait: 1h, on_timeout: skip}"
    text = f"program: 'true'\ncondition: {written}\n"
    [condition] = parse_job("j", load_yaml(text), Templates()).conditions
    assert isinstance(condition, DependencyCondition)
    assert (condition.max_wait, condition.on_timeout) == (3600.0, State.SKIPPED)


@pytest.mark.parametrize(
    ("agent_id", "login"),
    [("local", False), ("static:svc", False), ("sudo:etl", True), ("ssh:batch@h1", True)],
)
def test_another_users_agent_gives_a_login_environment(agent_id: str, login: bool) -> None:
    bound = BoundProcess(("true",))
    run = Run("r1", "j", {}, State.RUNNING, program=bound, agent_id=agent_id)
    assert proc_spec(run, bound).login_env is login
