"""One run's bad start never holds up another, against a real server and agent: a start
the agent can never take ends its run in `error` at once, and an operator can always
end a run stuck in `starting` without its program running later unwatched."""

from __future__ import annotations

import functools
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import Server, pid_alive, running_server, wait_for

pytestmark = pytest.mark.timeout(90)

JOBS = {
    # Bound to 9 MB of command: over what an agent takes in one request.
    "huge": "program: {type: shell, command: \"echo {{ 'x' * 9000000 }}\"}\n",
    # Bound to a lone surrogate: text that no UTF-8 encoder takes.
    "surrogate": "program: {type: shell, command: \"echo {{ '%c' % 55296 }}\"}\n",
    "hello": "params: [n]\nprogram: {type: shell, command: 'echo hello {{ n }}'}\n",
    "pidfile": "params: [m]\nprogram: {type: shell, command: 'echo $$ > {{ m }}; exec sleep 30'}\n",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("bad-starts"), JOBS) as server:
        yield server


def assert_next_run_works(server: Server) -> None:
    start = time.monotonic()
    run_id = server.schedule("hello", {"n": "1"})
    assert server.wait_finished(run_id, timeout=5)["state"] == "success"
    assert time.monotonic() - start < 1.0, "a normal run took over a second"


@pytest.mark.parametrize(
    ("job_id", "reason"), [("huge", "over the agent's limit"), ("surrogate", "surrogates")]
)
def test_a_start_the_agent_cannot_take_errors_at_once(
    server: Server, job_id: str, reason: str
) -> None:
    started = time.monotonic()
    run_id = server.schedule(job_id)
    run = server.wait_finished(run_id, timeout=5)
    assert run["state"] == "error"
    assert "start refused" in run["message"] and reason in run["message"]
    assert time.monotonic() - started < 3.0
    assert_next_run_works(server)
    assert "retrying" not in server.log()


def test_bad_starts_among_good_ones_hold_none_up(server: Server) -> None:
    """Submitted together, so they share start batches: each good run succeeds."""
    good = [server.schedule("hello", {"n": str(i)}) for i in range(3)]
    bad = [server.schedule("huge"), server.schedule("surrogate")]
    good += [server.schedule("hello", {"n": str(i)}) for i in range(3, 6)]
    for run_id in good:
        assert server.wait_finished(run_id, timeout=5)["state"] == "success"
    for run_id in bad:
        assert server.wait_finished(run_id, timeout=5)["state"] == "error"


def test_a_run_stuck_in_starting_can_be_ended_and_its_program_never_runs_on(
    tmp_path: Path,
) -> None:
    """The agent is frozen (SIGSTOP): runs wait in `starting`, their starts in flight
    or queued. Set to error by hand, they stay ended when the agent wakes: a queued
    start is never sent, and a program the agent starts anyway is stopped."""
    with running_server(tmp_path / "server", JOBS) as server:
        assert_next_run_works(server)  # the local agent is up
        agent = server.agent_pid()
        assert agent is not None
        markers = [tmp_path / f"pid{i}" for i in range(3)]
        os.kill(agent, signal.SIGSTOP)
        try:
            stuck = [server.schedule("pidfile", {"m": str(m)}) for m in markers]
            assert {server.run(r)["state"] for r in stuck} == {"starting"}
            for run_id in stuck:
                ended = server.post(f"/runs/{run_id}/error", {"message": "agent frozen"})
                assert ended["run"]["state"] == "error"
        finally:
            os.kill(agent, signal.SIGCONT)
        assert_next_run_works(server)

        def program_gone(marker: Path) -> bool:
            if not marker.exists():
                return True
            text = marker.read_text().strip()
            return bool(text) and not pid_alive(int(text))

        for marker in markers:
            wait_for(functools.partial(program_gone, marker), 15, f"{marker}'s program to end")
        assert not markers[2].exists(), "a start queued behind the frozen agent was sent"
        for run_id in stuck:
            run = server.run(run_id)
            assert run["state"] == "error" and run["message"] == "agent frozen"
