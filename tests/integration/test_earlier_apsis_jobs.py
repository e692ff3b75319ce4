"""The earlier Apsis's job files (tests/compat/earlier_apsis/) on a real server and
agent: all load, and templates in fields that are not text are expanded when a run
is bound; a bad value errors that run, with the reason in its log."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import Server, running_server

pytestmark = pytest.mark.timeout(120)

EARLIER = Path(__file__).parents[1] / "compat" / "earlier_apsis"
JOBS = {
    path.relative_to(EARLIER).as_posix()[: -len(".yaml")]: path.read_text()
    for path in EARLIER.rglob("*.yaml")
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("apsis"), JOBS) as server:
        yield server


def _log(server: Server, run_id: str) -> list[str]:
    return [e["message"] for e in server.get(f"/runs/{run_id}/log")["log"]]


def test_every_job_loads(server: Server) -> None:
    answer = server.get("/jobs")
    assert answer["errors"] == []
    assert sorted(j["job_id"] for j in answer["jobs"]) == sorted(JOBS)


def test_a_templated_no_op_duration(server: Server) -> None:
    good = server.schedule("programs/noop duration template", {"duration": "0.2s"})
    bad = server.schedule("programs/noop duration template", {"duration": "a while"})
    assert server.wait_finished(good)["state"] == "success"
    assert server.wait_finished(bad)["state"] == "error"
    assert any(
        "program.duration: expected a duration" in m and "{{ duration }}" in m
        for m in _log(server, bad)
    ), _log(server, bad)


def test_a_templated_timeout_signal(server: Server) -> None:
    # sleep 3 with a one second timeout: stopped with the signal the arg names.
    good = server.schedule("programs/timeout signal template", {"signal": "SIGUSR1"})
    bad = server.schedule("programs/timeout signal template", {"signal": "SIGNOPE"})
    run = server.wait_finished(good)
    assert run["state"] == "failure", run
    assert server.meta(good)["signal"] == "SIGUSR1", server.meta(good)
    assert server.wait_finished(bad)["state"] == "error"
    assert any(
        "program.timeout.signal: expected a signal like SIGTERM, got 'SIGNOPE'" in m
        for m in _log(server, bad)
    ), _log(server, bad)


def test_a_templated_archive_age_and_count(server: Server) -> None:
    good = server.schedule("internal/archive template", {"age": "1 day", "count": "5"})
    bad = server.schedule("internal/archive template", {"age": "1 day", "count": "five"})
    assert server.wait_finished(good)["state"] == "success", _log(server, good)
    assert server.wait_finished(bad)["state"] == "error"
    assert any("program.count: expected an integer" in m for m in _log(server, bad))
