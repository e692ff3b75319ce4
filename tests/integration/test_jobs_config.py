"""jobs.yaml on the real server: defaults and named types reach the program that
runs; a broken jobs.yaml keeps every job as it was."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness import Server, running_server

JOBS_YAML = """
defaults:
  "": {program: {env: {vars: {GREETING: hello}}}, labels: [everyone]}
  team/: {labels: [team]}
programs:
  greet: {type: shell, command: 'echo "$GREETING $WHO"'}
"""
JOBS = {
    "jobs": JOBS_YAML,
    "team/hi": "program: {type: greet, env: {vars: {WHO: team}}}\n",
}


@pytest.fixture
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("jobsyaml"), JOBS) as server:
        yield server


def test_defaults_and_named_types_reach_the_program(server: Server) -> None:
    jobs = server.get("/jobs")
    assert [j["job_id"] for j in jobs["jobs"]] == ["team/hi"] and jobs["errors"] == []
    assert server.get("/jobs/team/hi")["job"]["labels"] == ["everyone", "team"]
    run_id = server.schedule("team/hi")
    assert server.wait_finished(run_id)["state"] == "success"
    assert server.output(run_id) == b"hello team\n"


def test_a_broken_jobs_yaml_keeps_the_jobs(server: Server) -> None:
    (server.jobs_dir / "jobs.yaml").write_text("defaults: {team: {labels: [x]}}\n")
    answer = server.post("/jobs/reload")
    assert answer["kept"] == ["team/hi"]
    messages = {(e["path"], e["message"]) for e in answer["errors"]}
    assert ("team/hi.yaml", "not loaded: jobs.yaml has errors") in messages
    assert any(path == "jobs.yaml" for path, _ in messages)
    run_id = server.schedule("team/hi")  # as it was
    server.wait_finished(run_id)
    assert server.output(run_id) == b"hello team\n"
