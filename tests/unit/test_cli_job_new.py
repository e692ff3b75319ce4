"""`apsis job new NAME`: a commented job file that loads as it is, never over a file."""

from __future__ import annotations

from pathlib import Path

import pytest

from apsis_server.core.templates import Templates, default_helpers
from apsis_server.jobsdir import load_jobs_dir
from cli.main import main


def load(jobs: Path) -> list[str]:
    result = load_jobs_dir(jobs, Templates(default_helpers({})), {})
    assert result.errors == [], result.errors
    return sorted(result.jobs)


@pytest.mark.parametrize("name", ["hello", "team/nightly report", "a/b/c.yaml", "it's #1: x"])
def test_the_template_loads_as_it_is(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    assert main(["job", "new", name, "--dir", str(tmp_path)]) == 0
    job_id = name.removesuffix(".yaml")
    written = tmp_path / f"{job_id}.yaml"
    assert f"wrote {written}" in capsys.readouterr().out
    assert load(tmp_path) == [job_id]
    text = written.read_text()
    for key in ("# schedule:", "# conditions:", "# actions:", "timeout", "metadata:"):
        assert key in text


def test_never_overwrites(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "mine.yaml").write_text("program: echo precious\n")
    assert main(["job", "new", "mine", "--dir", str(tmp_path)]) == 1
    assert "exists already" in capsys.readouterr().err
    assert (tmp_path / "mine.yaml").read_text() == "program: echo precious\n"


@pytest.mark.parametrize("name", ["", "/", "../escape", "a/../b", ".hidden", "new\nline", "x/"])
def test_refuses_names_that_are_no_job_id(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    assert main(["job", "new", name, "--dir", str(tmp_path / "jobs")]) == 2
    assert "expected a job id" in capsys.readouterr().err
    assert not (tmp_path / "escape.yaml").exists()
    assert not list(tmp_path.rglob("*.yaml"))


def test_refuses_the_jobs_directorys_configuration(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["job", "new", "jobs", "--dir", str(tmp_path)]) == 2
    assert "configuration" in capsys.readouterr().err
    assert not (tmp_path / "jobs.yaml").exists()
    assert main(["job", "new", "etl/jobs", "--dir", str(tmp_path)]) == 0  # only the root's
