"""Extensions: plugin types validated and reported like built-in ones, and bad
plugins reported and skipped (docs/extending.md). The plugins are the example
package's (tests/plugins/apsis_example), loaded through its installed entry points."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import pytest

from apsis_common.states import State
from apsis_server.actions.runner import ActionRunner
from apsis_server.checkjobs import main as check_jobs
from apsis_server.core.actions import PluginAction
from apsis_server.core.bound import BoundProcess, bind
from apsis_server.core.conditions import PluginCondition
from apsis_server.core.extensions import BadPlugin, Extensions, Kind
from apsis_server.core.fields import Fields, Invalid
from apsis_server.core.jobs import Job, load_yaml, next_times, parse_job
from apsis_server.core.registry import Registry
from apsis_server.core.runs import Run
from apsis_server.core.schedules import PluginSchedule
from apsis_server.core.templates import Templates
from apsis_server.core.waiting import VerdictKind, check
from apsis_server.jobsdir import load_jobs_dir
from apsis_server.plugins import load_extensions
from tests.harness import run_async


@pytest.fixture
def ext(example_plugin: Path) -> Extensions:
    loaded = load_extensions()
    assert loaded.problems == []
    return loaded.extensions


def _job(ext: Extensions, text: str, job_id: str = "j") -> Job:
    return parse_job(job_id, load_yaml(text), Templates(ext.helpers()), extensions=ext)


def _errors(ext: Extensions, text: str) -> list[str]:
    with pytest.raises(Invalid) as caught:
        _job(ext, text)
    return [str(e) for e in caught.value.errors]


def test_the_example_plugins_load_beside_the_builtins(ext: Extensions) -> None:
    assert "example-echo" in ext.programs and "shell" in ext.programs
    assert ext.programs.origin("shell") == "built-in"
    assert ext.programs.origin("example-echo").startswith(
        "entry point apsis.programs:example-echo (apsis_example:EchoProgram)"
    )
    assert list(ext.schedules.plugins()) == ["example-every"]
    assert list(ext.conditions.plugins()) == ["example-after"]
    assert list(ext.actions.plugins()) == ["example-record"]
    assert list(ext.template_functions.plugins()) == ["shout"]
    assert "Date" in ext.template_functions  # the built-in helpers register the same way


ECHO = "program: {type: example-echo, words: [hi]}\n"

# (job file, the errors it gets: key path and message, as for built-in types)
MALFORMED = [
    ("program: {type: example-echo}\n", ["program.words: missing"]),
    (
        "program: {type: example-echo, words: hi}\n",
        ["program.words: expected a non-empty list of words"],
    ),
    (
        "program: {type: example-echo, words: [hi], colour: red}\n",
        [
            "program.colour: unknown key (expected one of: cwd, env, host, resources, stderr,"
            " stop, timeout, type, upper, user, words)"
        ],
    ),
    (
        "program: {type: example-echo, words: [hi], timeout: soon}\n",
        ["program.timeout: expected a duration like '30s' or '10 min', got 'soon'"],
    ),
    (
        "program: {type: example-echo, words: ['{{ nope }}']}\n",
        ["program.words[0]: template uses unknown name(s): nope"],
    ),
    (
        ECHO + "schedule: {type: example-every, seconds: -1}\n",
        ["schedule.seconds: expected a positive number of seconds, got -1"],
    ),
    (
        ECHO + "schedule: [{type: example-every, seconds: 5, every: 1}]\n",
        [
            "schedule[0].every: unknown key (expected one of: args, enabled, end_date, jitter,"
            " seconds, start_date, type)"
        ],
    ),
    (
        ECHO + "schedule: [{type: example-every, seconds: 5, args: {x: 1}}]\n",
        ["schedule[0].args.x: 'x' is not a param of the job"],
    ),
    (ECHO + "condition: {type: example-after}\n", ["condition.job_id: missing"]),
    (
        ECHO + "conditions: [{type: example-after, job_id: a, then: b}]\n",
        ["conditions[0].then: unknown key (expected one of: job_id, type)"],
    ),
    (
        ECHO + "action: {type: example-record, path: /tmp/x, states: [waiting]}\n",
        ["action.states: expected finished states, got waiting"],
    ),
    (
        ECHO + "action: {type: example-record, path: /tmp/x, timeout: 0}\n",
        ["action.timeout: expected a positive duration, got 0"],
    ),
    (
        ECHO + "action: {type: example-record, states: [waiting]}\n",
        ["action.states: expected finished states, got waiting", "action.path: missing"],
    ),
    (
        ECHO + "action: {type: example-record, path: /tmp/x, to: y}\n",
        ["action.to: unknown key (expected one of: path, states, timeout, type)"],
    ),
]


def test_a_job_using_every_kind_loads(ext: Extensions) -> None:
    job = _job(
        ext,
        "params: [who]\n"
        "program: {type: example-echo, words: [hello, '{{ shout(who) }}'], host: h1,"
        " env: {vars: {EXAMPLE_PLUGIN: mine}}, cwd: /tmp}\n"
        "schedule: {type: example-every, seconds: 60, args: {who: x}}\n"
        "condition: {type: example-after, job_id: other}\n"
        "action: {type: example-record, path: /tmp/record, states: [failure], timeout: 5s}\n",
    )
    assert job.program.type == "example-echo"
    assert job.program.to_plain()["words"] == ["hello", "{{ shout(who) }}"]
    (schedule,) = job.schedules
    assert isinstance(schedule, PluginSchedule) and schedule.type_name == "example-every"
    (condition,) = job.conditions
    assert isinstance(condition, PluginCondition) and condition.form["job_id"] == "other"
    (action,) = job.actions
    assert isinstance(action, PluginAction)
    assert (action.states, action.timeout) == ((State.FAILURE,), 5.0)

    bound = bind(job.program, Templates(ext.helpers()), {"who": "you", "args": {"who": "you"}})
    assert isinstance(bound, BoundProcess)
    assert bound.argv == ("/bin/echo", "hello", "YOU!")
    assert (bound.host, bound.cwd) == ("h1", "/tmp")
    assert bound.env["EXAMPLE_PLUGIN"] == "mine"  # the job's env wins over the plugin's


@pytest.mark.parametrize(("text", "expected"), MALFORMED)
def test_plugin_types_are_validated_like_builtins(
    ext: Extensions, text: str, expected: list[str]
) -> None:
    assert _errors(ext, text) == expected


def test_unknown_types_list_the_plugins_too(ext: Extensions) -> None:
    (error,) = _errors(ext, "program: {type: nope}\n")
    assert error.startswith("program.type: unknown program type 'nope' (expected shell,")
    assert error.endswith(", example-echo)")
    (error,) = _errors(ext, ECHO + "schedule: {type: nope}\n")
    assert error.endswith("crontab, example-every)")
    (error,) = _errors(ext, "program: 'echo {{ whisper(1) }}'\n")
    assert error == "program.command: template uses unknown name(s): whisper"


def test_without_the_plugins_their_types_are_unknown(ext: Extensions) -> None:
    with pytest.raises(Invalid, match="unknown program type 'example-echo'"):
        parse_job("j", load_yaml(ECHO), Templates())


def test_the_schedule_yields_the_plugins_times(ext: Extensions) -> None:
    job = _job(ext, ECHO + "schedule: {type: example-every, seconds: 60, jitter: 0}\n")
    assert [d.time for d in next_times(job, 1000.0, 3)] == [1020.0, 1080.0, 1140.0]
    assert job.schedules[0].text() == "every 60 seconds (example)"


class _View:
    def __init__(self, succeeded: set[str]) -> None:
        self.succeeded = succeeded

    def exists(
        self, job_id: str, args: Mapping[str, str], states: Sequence[State], exclude: str
    ) -> bool:
        return job_id in self.succeeded and State.SUCCESS in states

    def count(self, job_id: str, args: Mapping[str, str] | None, states: Sequence[State]) -> int:
        return 0

    def params(self, job_id: str) -> tuple[str, ...] | None:
        return () if job_id in ("other", "gone-soon") else None


def test_the_condition_waits_then_releases(ext: Extensions) -> None:
    job = _job(ext, ECHO + "condition: {type: example-after, job_id: '{{ job_id }}-soon'}\n")
    run = Run("r1", "gone", {}, State.WAITING)

    def expand(text: str) -> str:
        return text.replace("{{ job_id }}", run.job_id)

    verdict = check(run, job.conditions, _View(set()), expand)
    assert (verdict.kind, verdict.watch) == (VerdictKind.WAIT, ("gone-soon",))
    assert check(run, job.conditions, _View({"gone-soon"}), expand).kind == VerdictKind.READY
    stray = Run("r2", "x", {}, State.WAITING)
    verdict = check(
        stray,
        _job(ext, ECHO + "condition: {type: example-after, job_id: x}\n").conditions,
        _View(set()),
        str,
    )
    assert (verdict.kind, verdict.message) == (VerdictKind.ERROR, "no job x")


def test_check_jobs_knows_the_installed_plugins(
    ext: Extensions, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "echo.yaml").write_text(
        "params: [who]\n"
        "program: {type: example-echo, words: ['{{ shout(who) }}']}\n"
        "schedule: {type: example-every, seconds: 60, args: {who: me}}\n"
    )
    (tmp_path / "bad.yaml").write_text("program: {type: example-echo, word: [x]}\n")
    assert check_jobs([str(tmp_path)]) == 1
    out = capsys.readouterr().out
    # The plugin's own error; the keys it did not get to read are not called unknown.
    assert out == "bad.yaml: program.words: missing\n1 jobs loaded, 1 errors, 0 warnings\n"


def test_jobs_yaml_names_and_defaults_plugin_types(ext: Extensions, tmp_path: Path) -> None:
    (tmp_path / "jobs.yaml").write_text(
        "defaults: {'': {program: {host: h2}}}\n"
        "programs: {hello: {type: example-echo, words: [hello]}}\n"
        "conditions: {after-load: {type: example-after, job_id: load}}\n"
    )
    (tmp_path / "greet.yaml").write_text(
        "program: {type: hello, upper: true}\ncondition: {type: after-load}\n"
    )
    loaded = load_jobs_dir(tmp_path, Templates(ext.helpers()), extensions=ext)
    assert loaded.errors == []
    job = loaded.jobs["greet"]
    assert (job.program.type, job.program.argv, job.program.host) == (
        "example-echo",
        ("/bin/echo", "HELLO"),
        "h2",
    )
    assert isinstance(job.conditions[0], PluginCondition)
    # Without the plugins, the named type is based on an unknown type.
    (error,) = load_jobs_dir(tmp_path, Templates()).errors[:1]
    assert (error.key_path, error.message.split(" (")[0]) == (
        "programs.hello.type",
        "expected a built-in type",
    )


# -- broken plugins -------------------------------------------------------------------


def _points(*points: tuple[str, str, str]) -> Callable[[str], Iterable[EntryPoint]]:
    """A stand-in for the installed entry points: (group, name, value)."""

    def find(group: str) -> list[EntryPoint]:
        return [EntryPoint(name, value, g) for g, name, value in points if g == group]

    return find


class _Exploding:
    def parse(self, fields: Fields) -> Any:
        raise RuntimeError("oops")


class _Unmakeable:
    def __init__(self, needed: int) -> None:
        pass


BROKEN = [
    ("apsis.programs", "gone", "apsis_example_not_installed:Program", "cannot load"),
    ("apsis.programs", "typo", "apsis_example:NoSuchName", "cannot load"),
    ("apsis.programs", "shapeless", "apsis_example:shout", "parse(fields)"),
    ("apsis.conditions", "unmakeable", "tests.unit.test_extensions:_Unmakeable", "cannot make"),
    ("apsis.programs", "shell", "apsis_example:EchoProgram", "already registered by built-in"),
    ("apsis.schedules", "daily", "apsis_example:EverySchedule", "already registered by built-in"),
    ("apsis.actions", "email", "apsis_example:RecordAction", "already registered by built-in"),
    ("apsis.programs", "apsis.program.Mine", "apsis_example:EchoProgram", "reserved"),
    ("apsis.template_functions", "Date", "apsis_example:shout", "already registered"),
    ("apsis.template_functions", "words", "apsis_example:__doc__", "must be callable"),
    ("apsis.template_functions", "no-name", "apsis_example:shout", "not a name templates"),
]


@pytest.mark.parametrize(("group", "name", "value", "why"), BROKEN)
def test_a_broken_plugin_is_reported_and_skipped(
    example_plugin: Path,
    caplog: pytest.LogCaptureFixture,
    group: str,
    name: str,
    value: str,
    why: str,
) -> None:
    good = ("apsis.programs", "example-echo", "apsis_example:EchoProgram")
    with caplog.at_level(logging.ERROR, "apsis_server.plugins"):
        loaded = load_extensions(_points(good, (group, name, value)))
    (problem,) = loaded.problems
    assert f"entry point {group}:{name} ({value})" in problem
    assert why in problem
    assert problem in caplog.text
    registries: dict[str, Registry[Any]] = {
        "apsis.programs": loaded.extensions.programs,
        "apsis.schedules": loaded.extensions.schedules,
        "apsis.conditions": loaded.extensions.conditions,
        "apsis.actions": loaded.extensions.actions,
        "apsis.template_functions": loaded.extensions.template_functions,
    }
    registry = registries[group]
    assert name not in registry or registry.origin(name) == "built-in"
    assert "example-echo" in loaded.extensions.programs  # the others still load
    assert loaded.loaded == ["apsis.programs: example-echo (apsis_example:EchoProgram)"]


def test_of_two_plugins_with_one_name_the_second_is_refused(example_plugin: Path) -> None:
    loaded = load_extensions(
        _points(
            ("apsis.programs", "echo", "apsis_example:EchoProgram"),
            ("apsis.programs", "echo", "apsis_example:RecordAction"),
        )
    )
    (problem,) = loaded.problems
    assert "already registered by entry point apsis.programs:echo (apsis_example:EchoProgram)" in (
        problem
    )


def test_a_plugin_that_raises_is_a_job_error_not_a_crash(ext: Extensions) -> None:
    ext.add(Kind.PROGRAMS, "exploding", _Exploding, "test")
    assert _errors(ext, "program: {type: exploding, x: 1}\n") == [
        "program: exploding program plugin failed: RuntimeError: oops"
    ]
    with pytest.raises(BadPlugin, match="already registered by test"):
        ext.add(Kind.PROGRAMS, "exploding", _Exploding, "again")


def test_a_plugin_giving_a_bad_process_is_a_job_error(ext: Extensions) -> None:
    class Empty:
        def parse(self, fields: Fields) -> Any:
            fields.take("x", lambda v, p: v, None)
            from apsis_server.core.programs import ProcessSpec

            return ProcessSpec(argv=())

    ext.add(Kind.PROGRAMS, "empty", Empty(), "test")
    (error,) = _errors(ext, "program: {type: empty}\n")
    assert error.startswith("program: empty program plugin gave a bad process (argv, env, cwd)")


# -- actions ---------------------------------------------------------------------------


class _Engine:
    def __init__(self) -> None:
        self.notes: list[tuple[str, str]] = []

    def clock(self) -> float:
        return 0.0

    def expand(self, text: str, scope: Mapping[str, Any]) -> str:
        return text

    def job(self, job_id: str) -> Job | None:
        return None

    def stored_meta(self, run_id: str) -> dict[str, Any]:
        return {}

    def note(self, run_id: str, message: str) -> None:
        self.notes.append((run_id, message))

    def commit(self) -> None:
        pass


class _Slow:
    async def fire(self, run: Run) -> str | None:
        await asyncio.sleep(60)
        return None


class _Failing:
    async def fire(self, run: Run) -> str | None:
        raise OSError("disk on fire")


class _Quiet:
    async def fire(self, run: Run) -> str | None:
        return None


def test_plugin_actions_are_called_within_their_timeout_and_logged() -> None:
    engine = _Engine()
    runner = ActionRunner(engine)
    run = Run("r7", "j", {}, State.FAILURE)
    job = Job(
        "j",
        (),
        parse_job("j", {"program": "true"}, Templates()).program,
        actions=(
            PluginAction("slow", _Slow(), timeout=0.05),
            PluginAction("failing", _Failing()),
            PluginAction("quiet", _Quiet()),
            PluginAction("on-success", _Quiet(), states=(State.SUCCESS,)),
        ),
    )

    async def go() -> None:
        assert runner.fire(run, job, {}) == []
        task = asyncio.create_task(runner.run())
        try:
            for _ in range(200):
                if len(engine.notes) == 3:
                    break
                await asyncio.sleep(0.01)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    run_async(go)
    assert sorted(engine.notes) == [
        ("r7", "failing action failed: OSError: disk on fire"),
        ("r7", "quiet action done"),
        ("r7", "slow action timed out after 0.05s"),
    ]


class _Raising:
    def check(self, run: Run, view: Any, expand: Callable[[str], str]) -> Any:
        raise KeyError("k")


class _Answering:
    def check(self, run: Run, view: Any, expand: Callable[[str], str]) -> Any:
        return "yes"


def test_a_condition_that_raises_or_answers_nonsense_is_an_error() -> None:
    run = Run("r1", "j", {}, State.WAITING)
    verdict = check(run, [PluginCondition("boom", _Raising())], _View(set()), str)
    assert (verdict.kind, verdict.message) == (
        VerdictKind.ERROR,
        "boom condition failed: KeyError('k')",
    )
    verdict = check(run, [PluginCondition("odd", _Answering())], _View(set()), str)
    assert (verdict.kind, verdict.message) == (
        VerdictKind.ERROR,
        "odd condition answered 'yes', not a Verdict",
    )
