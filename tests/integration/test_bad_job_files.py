"""Bad job files against the real server and CLI: each is its own file's error, and
the server starts, reloads and runs the other jobs; `shquote` keeps args inert."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import Server, running_server

pytestmark = pytest.mark.timeout(90)

BAD_FILTER = 'params: [name]\nprogram: {type: shell, command: "echo {{ name | nosuchfilter }}"}\n'
FILTER_ERROR = "bad template 'echo {{ name | nosuchfilter }}': no filter named 'nosuchfilter'"


def _laughs() -> str:
    """The "billion laughs": nine levels of nine aliases each, 9**9 values."""
    lines = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 9)]
    return "program: 'true'\nmetadata:\n" + textwrap.indent("\n".join(lines), "  ") + "\n"


JOBS = {
    "good": "program: echo good\n",
    "bad filter": BAD_FILTER,
    "bad test": "program: 'echo {% if job_id is nosuchtest %}x{% endif %}'\n",
    "bomb": _laughs(),
    "quoted": "params: [name]\nprogram: {type: shell, command: 'echo {{ name | shquote }}'}\n",
    "unquoted": "params: [name]\nprogram: {type: shell, command: 'echo {{ name }}'}\n",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("apsis"), JOBS) as server:
        yield server


def _errors(answer: dict[str, Any], job_id: str) -> list[tuple[str, str, str]]:
    return [
        (e["path"], e["key_path"], e["message"]) for e in answer["errors"] if e["job_id"] == job_id
    ]


def test_the_server_starts_and_lists_each_bad_files_error(server: Server) -> None:
    answer = server.get("/jobs")
    assert sorted(j["job_id"] for j in answer["jobs"]) == ["good", "quoted", "unquoted"]
    assert _errors(answer, "bad filter") == [("bad filter.yaml", "program.command", FILTER_ERROR)]
    [(path, key_path, message)] = _errors(answer, "bad test")
    assert (path, key_path) == ("bad test.yaml", "program.command")
    assert message.endswith("no test named 'nosuchtest'")
    response = server.api("GET", "/jobs/bad filter")
    assert response.status_code == 422
    assert response.json()["errors"][0]["message"] == FILTER_ERROR


def test_the_good_job_runs(server: Server) -> None:
    run_id = server.schedule("good")
    assert server.wait_finished(run_id)["state"] == "success"
    assert server.output(run_id) == b"good\n"


def test_an_alias_bomb_is_refused_and_the_server_stays_responsive(server: Server) -> None:
    assert len(JOBS["bomb"]) < 1000
    started = time.monotonic()
    response = server.api("GET", "/jobs")
    assert response.status_code == 200
    assert time.monotonic() - started < 2
    assert len(response.content) < 100_000
    [(path, key_path, message)] = _errors(response.json(), "bomb")
    assert (path, key_path) == ("bomb.yaml", "")
    assert message == "YAML error: line 7, column 7: aliases expand to more than 10,000 values"
    assert server.api("GET", "/jobs/bomb").status_code == 422
    assert server.get("/alive") == {"alive": True}


def test_reload_answers_a_bad_filter_file_with_its_error(server: Server) -> None:
    new = server.jobs_dir / "new bad.yaml"
    new.write_text(BAD_FILTER)
    try:
        response = server.api("POST", "/jobs/reload")
        assert response.status_code == 200, response.text
        assert _errors(response.json(), "new bad") == [
            ("new bad.yaml", "program.command", FILTER_ERROR)
        ]
        assert _errors(server.get("/jobs"), "new bad") == [
            ("new bad.yaml", "program.command", FILTER_ERROR)
        ]
        run_id = server.schedule("good")
        assert server.wait_finished(run_id)["state"] == "success"
    finally:
        new.unlink()
        server.post("/jobs/reload")


def test_shquote_passes_an_arg_as_text(server: Server, tmp_path: Path) -> None:
    # Without shquote the arg is shell code: the check below does see a command run.
    unsafe = tmp_path / "unquoted"
    run_id = server.schedule("unquoted", {"name": f"x; touch {unsafe}"})
    assert server.wait_finished(run_id)["state"] == "success"
    assert unsafe.exists()

    pwned = tmp_path / "pwned"
    for name in [f"x; touch {pwned}", f"$(touch {pwned})", f"`touch {pwned}`", "it's", ""]:
        run_id = server.schedule("quoted", {"name": name})
        assert server.wait_finished(run_id)["state"] == "success"
        assert server.output(run_id) == f"{name}\n".encode()
    assert not pwned.exists()


def test_check_jobs_prints_the_error_without_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "good.yaml").write_text("program: 'true'\n")
    (tmp_path / "bad.yaml").write_text(BAD_FILTER)
    (tmp_path / "bomb.yaml").write_text(_laughs())
    apsis = Path(sys.executable).parent / "apsis"
    done = subprocess.run(
        [str(apsis), "check-jobs", str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1, done
    assert done.stdout.splitlines() == [
        f"bad.yaml: program.command: {FILTER_ERROR}",
        "bomb.yaml: YAML error: line 7, column 7: aliases expand to more than 10,000 values",
        "1 jobs loaded, 2 errors, 0 warnings",
    ]
    assert "Traceback" not in done.stderr
    assert done.stderr == ""
