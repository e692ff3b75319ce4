"""A dependency's max_wait on the real server: the run stops waiting for it after so
long and ends in error (or skipped) with the reason; met in time, it just runs."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.harness import Server, running_server

JOBS = {
    "upstream": "program: 'true'\n",
    "gives-up": "program: 'echo ran'\n"
    "condition: {type: dependency, job_id: upstream, max_wait: 2s}\n",
    "skips": "program: 'echo ran'\n"
    "condition: {type: dependency, job_id: upstream, max_wait: 2s, on_timeout: skip}\n",
    "patient": "program: 'echo ran'\n"
    "condition: {type: dependency, job_id: upstream, max_wait: 30s}\n",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("maxwait"), JOBS) as server:
        yield server


def test_gives_up_in_error_or_skipped_after_max_wait(server: Server) -> None:
    started = time.monotonic()
    error, skipped = server.schedule("gives-up"), server.schedule("skips")
    server.wait_state(error, "waiting")
    first = server.wait_finished(error, 10)
    assert time.monotonic() - started >= 1.9  # not before its time
    assert first["state"] == "error"
    assert "gave up waiting for upstream to be success after 2s" in first["message"]
    second = server.wait_finished(skipped, 10)
    assert second["state"] == "skipped" and "max_wait" in second["message"]
    assert server.output(error) == b""  # its program never ran


def test_met_in_time_it_runs(server: Server) -> None:
    run_id = server.schedule("patient")
    server.wait_state(run_id, "waiting")
    server.wait_finished(server.schedule("upstream"))
    assert server.wait_finished(run_id, 10)["state"] == "success"
    assert server.output(run_id) == b"ran\n"
