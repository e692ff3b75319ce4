"""The jobs directory's jobs.yaml: defaults by folder and named types, through the
same loader the server and `apsis check-jobs` use."""

from __future__ import annotations

from pathlib import Path

import pytest

from apsis_server.checkjobs import main as check_jobs
from apsis_server.core.conditions import DependencyCondition
from apsis_server.core.fields import Invalid
from apsis_server.core.jobsconfig import parse_jobs_config
from apsis_server.core.templates import Templates, default_helpers
from apsis_server.jobsdir import JobsLoad, load_jobs_dir

CONFIG = """
defaults:
  "": {labels: [nightly], metadata: {team: ops}}
  etl/:
    program: {host: etl1, user: etl, env: {vars: {STAGE: prod}}}
    waiting: {max_time: 1h}
    labels: [etl]
  etl/slow/:
    program: {user: slow}
    conditions: [{type: after-load}]
programs:
  etl-python: {type: program, argv: [/usr/bin/python3, -m], user: py}
conditions:
  after-load: {type: dependency, job_id: etl/load}
actions:
  page-ops: {type: webhook, url: "https://ops.example/hook"}
"""


def _load(tmp_path: Path, files: dict[str, str], config: str = CONFIG) -> JobsLoad:
    (tmp_path / "jobs.yaml").write_text(config)
    for name, text in files.items():
        path = tmp_path / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return load_jobs_dir(tmp_path, Templates(default_helpers({})))


def test_defaults_by_folder_the_deepest_and_the_job_win(tmp_path: Path) -> None:
    loaded = _load(
        tmp_path,
        {
            "top": "program: echo top\n",
            "etl/load": "program: echo load\nlabels: [mine]\n",
            "etl/slow/crunch": "program: {type: shell, command: crunch, host: big}\n",
            "etl/idle": "program: {type: no-op, duration: 1}\n",
        },
    )
    assert loaded.errors == []
    jobs = loaded.jobs
    assert "jobs" not in jobs  # jobs.yaml is no job
    top, load, crunch, idle = (jobs[j] for j in ("top", "etl/load", "etl/slow/crunch", "etl/idle"))
    assert top.labels == ("nightly",) and top.metadata["team"] == "ops"
    assert top.program.host is None and top.waiting_max_time is None
    assert (load.program.host, load.program.user) == ("etl1", "etl")
    assert dict(load.program.env) == {"STAGE": "prod"}
    assert load.labels == ("nightly", "etl", "mine") and load.waiting_max_time == 3600
    assert (crunch.program.host, crunch.program.user) == ("big", "slow")  # job, then etl/slow/
    [condition] = crunch.conditions
    assert isinstance(condition, DependencyCondition) and condition.job_id == "etl/load"
    assert idle.program.type == "no-op"  # no host or user for a program that runs nothing


def test_named_types_are_laid_under_the_job_keys(tmp_path: Path) -> None:
    loaded = _load(
        tmp_path,
        {
            "report": "program: {type: etl-python, argv: [/usr/bin/python3, -m, report]}\n"
            "condition: {type: after-load, states: [success, failure]}\n"
            "action: {type: page-ops, states: [failure]}\n",
        },
    )
    assert loaded.errors == []
    job = loaded.jobs["report"]
    assert job.program.type == "program" and job.program.user == "py"
    assert list(job.program.argv) == ["/usr/bin/python3", "-m", "report"]
    [condition] = job.conditions
    assert isinstance(condition, DependencyCondition) and condition.job_id == "etl/load"
    assert condition.states == ("success", "failure")
    assert job.actions[0].type == "webhook"


def test_a_bad_jobs_yaml_loads_no_job_and_says_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = "defaults:\n  etl: {host: x}\nprograms:\n  shell: {type: shell}\n  mine: {type: nope}\n"
    loaded = _load(tmp_path, {"a": "program: echo a\n"}, bad)
    errors = [(e.path, e.key_path, e.message) for e in loaded.errors]
    assert loaded.jobs == {}
    assert ("a.yaml", "", "not loaded: jobs.yaml has errors") in errors
    assert any(
        p == "jobs.yaml" and k == "defaults.etl" and "ends with /" in m for p, k, m in errors
    )
    assert any(k == "defaults.etl.host" for _, k, _ in errors)
    assert any(k == "programs.shell" and "built-in" in m for _, k, m in errors)
    assert any(k == "programs.mine.type" for _, k, _ in errors)
    # check-jobs validates a directory with it alone, no server config.
    assert check_jobs([str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "jobs.yaml: defaults.etl:" in out and "0 jobs loaded" in out


@pytest.mark.parametrize(
    "text",
    [
        "[1, 2]",
        "defaults: [1]",
        "defaults: {'': {program: {type: shell}}}",
        "defaults: {'': {labels: web}}",
        "programs: {x: 3}",
        "extras: {}",
        "actions: {a: {type: program}}",
    ],
)
def test_what_jobs_yaml_refuses(text: str) -> None:
    from apsis_server.core.yamlfile import load_yaml

    with pytest.raises(Invalid):
        parse_jobs_config(load_yaml(text))


def test_no_jobs_yaml_changes_nothing(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("program: echo a\n")
    loaded = load_jobs_dir(tmp_path, Templates(default_helpers({})))
    assert loaded.errors == [] and loaded.jobs["a"].labels == ()


def test_a_folder_can_merge_stderr_for_its_jobs(tmp_path: Path) -> None:
    """`stderr: merge` (the earlier Apsis's single output) as a folder's default;
    a job may still ask for its streams apart."""
    config = 'defaults:\n  "old/": {program: {stderr: merge}}\n'
    files = {
        "old/a": "program: echo a\n",
        "old/b": "program: {type: shell, command: b, stderr: separate}\n",
        "new": "program: echo new\n",
    }
    jobs = _load(tmp_path, files, config).jobs
    modes = {name: jobs[name].program.stderr.value for name in files}
    assert modes == {"old/a": "merge", "old/b": "separate", "new": "separate"}
    (tmp_path / "bad").mkdir()
    bad = _load(tmp_path / "bad", {"x": "program: {type: shell, command: x, stderr: both}\n"}, "")
    assert [(e.key_path, e.message) for e in bad.errors] == [
        ("program.stderr", "expected separate or merge, got 'both'")
    ]
