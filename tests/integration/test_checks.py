"""The sanity checker against the real server and agent: each finding from a real
situation, in the API, the log, /metrics and `apsis check`."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from cli.main import main
from tests.harness import Server, running_server, wait_for
from tests.webhook_sink import WebhookSink

JOBS = {
    "fail": "params: [code]\nprogram: {type: shell, command: 'exit {{ code }}'}\n",
    "ok": "program: {type: program, argv: [/bin/true]}\n",
    "daily": "program: {type: program, argv: [/bin/true]}\n"
    "schedule: {type: daily, daytime: '03:00'}\n",
}
CONFIG = (
    "agents: {{heartbeat: 1s}}\n"
    "checks: {{interval: 1s, late: 5s, silent: 4s, failures: 3, webhooks: '{url}'}}\n"
)


HOOK = WebhookSink(refuse=1, status=503)  # where the checker POSTs new findings


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with HOOK:
        config = CONFIG.format(url=HOOK.url("/findings"))
        with running_server(tmp_path_factory.mktemp("checks"), JOBS, config) as server:
            yield server


def _findings(server: Server, check: str) -> list[dict[str, Any]]:
    return [f for f in server.get("/checks")["findings"] if f["check"] == check]


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def test_a_job_failing_again_and_again(server: Server) -> None:
    assert _findings(server, "failing") == []
    for _ in range(3):
        server.wait_finished(server.schedule("fail", {"code": "3"}))
    [finding] = _findings(server, "failing")
    assert finding["job_id"] == "fail" and finding["severity"] == "warning"
    assert "last 3 runs failed" in finding["message"] and "exit" in finding["message"]
    assert finding["link"] == f"/runs/{finding['run_id']}"
    # The periodic check exports it and logs it once.
    wait_for(
        lambda: (
            'apsis_check_findings{check="failing",severity="warning"} 1'
            in httpx.get(server.url + "/metrics", timeout=10).text
        ),
        15,
        "the finding in /metrics",
    )
    assert server.log().count("check failing: job fail") == 1
    # The webhook is told once, after a refused first try.
    told = wait_for(
        lambda: [h for h in HOOK.received if h["finding"]["check"] == "failing"], 15, "webhook"
    )
    assert told[0]["finding"]["job_id"] == "fail" and HOOK.refused == 1
    time.sleep(2.5)  # two more checks: nothing new to tell
    assert len([h for h in HOOK.received if h["finding"]["check"] == "failing"]) == 1
    # A run that succeeds ends it.
    server.wait_finished(server.schedule("fail", {"code": "0"}))
    assert _findings(server, "failing") == []


def test_a_run_that_started_late(server: Server) -> None:
    run_id = server.post("/runs", {"job_id": "ok", "time": _iso(time.time() - 30)})["run"]["run_id"]
    server.wait_finished(run_id)
    late = [f for f in _findings(server, "late-start") if f["run_id"] == run_id]
    assert len(late) == 1 and "after its time" in late[0]["message"]


def test_a_frozen_agent_is_silent_then_heard_again(
    server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    pid = server.agent_pid()
    assert pid is not None
    assert _findings(server, "silent-agent") == []
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_for(lambda: _findings(server, "silent-agent"), 15, "the agent found silent")
        [finding] = _findings(server, "silent-agent")
        assert finding["agent_id"] == "local" and finding["severity"] == "error"
        capsys.readouterr()
        assert main(["--server", server.url, "check"]) == 1  # an error: exit 1
        out = capsys.readouterr().out
        assert "silent-agent" in out and "local" in out and f"{server.url}/agents" in out
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for(lambda: not _findings(server, "silent-agent"), 15, "the agent heard again")


def test_a_scheduled_job_has_its_run_ahead(server: Server) -> None:
    # The daily job has its next run scheduled: nothing to say about it.
    assert _findings(server, "no-run-ahead") == []
    assert _findings(server, "overdue") == []
