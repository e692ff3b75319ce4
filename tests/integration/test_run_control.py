"""Conditions, waiting limits, timeouts, stop schedules, operations and actions,
against the real server and local agent."""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.harness import Server, group_alive, running_server, wait_for
from tests.webhook_sink import WebhookSink

JOBS = {
    "chain/a": "program: 'echo a'\n",
    "chain/b": ("program: 'echo b; exit 1'\ncondition: {type: dependency, job_id: chain/a}\n"),
    "chain/c": (
        "program: 'echo c'\n"
        "condition: {type: dependency, job_id: chain/b}\n"
        "waiting: {max_time: 2s}\n"
    ),
    "alarm": "program: 'echo alarm'\ncondition: {type: dependency, job_id: never, exist: true}\n",
    "never": "program: 'true'\n",
    "one at a time": ("program: 'sleep 0.3'\ncondition: {type: max_running, count: 1, per: job}\n"),
    "dedupe": ("params: [k]\nprogram: 'sleep 2'\ncondition: {type: skip_duplicate}\n"),
    "timeout": "program: {type: program, argv: [/bin/sleep, '30'], timeout: {duration: 1s}}\n",
    "stubborn": (
        "program:\n  type: shell\n  command: \"trap '' TERM; sleep 60 & wait\"\n"
        "  stop: {signal: SIGTERM, grace_period: 1s}\n"
    ),
    "sleepy": "program: {type: program, argv: [/bin/sleep, '30']}\n",
    "leaves a child": (
        "program:\n  type: shell\n  command: |\n"
        "    bash -c \"trap '' TERM; exec sleep 60\" &\n    wait\n"
        "  stop: {signal: SIGTERM, grace_period: 1s}\n"
    ),
    "later": "program: 'true'\n",
    "flaky": (
        "program: 'exit 3'\n"
        "action: {type: retry, max: 2, delay: 0.2s, backoff: 2, on: {exit_codes: [3]}}\n"
    ),
    "dep/first": "params: [d]\nprogram: 'true'\n",
    "dep/second": (
        "params: [d]\nprogram: 'true'\ncondition: {type: dependency, job_id: dep/first}\n"
    ),
    "follow/source": (
        "params: [x]\nprogram: 'true'\n"
        "action: {type: schedule, job_id: follow/target, if: {states: [success]}}\n"
    ),
    "follow/target": "params: [x]\nprogram: 'echo target {{ x }}'\n",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("control"), JOBS) as server:
        yield server


def _ts(text: str | None) -> float:
    assert text is not None
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _log(server: Server, run_id: str) -> list[str]:
    return [e["message"] for e in server.get(f"/runs/{run_id}/log")["log"]]


def test_chain_with_failed_middle_errors_at_waiting_limit(server: Server) -> None:
    c = server.schedule("chain/c")
    b = server.schedule("chain/b")
    assert server.run(c)["state"] == "waiting"
    assert server.run(b)["state"] == "waiting"
    a = server.schedule("chain/a")
    assert server.wait_finished(a)["state"] == "success"
    assert server.wait_finished(b)["state"] == "failure"
    run = server.wait_finished(c, 10)
    assert run["state"] == "error" and "waited too long" in run["message"]
    assert any("waiting for chain/b" in m for m in _log(server, c))


def test_alarm_with_exist_errors_at_once(server: Server) -> None:
    run = server.wait_finished(server.schedule("alarm"), 5)
    assert run["state"] == "error"
    assert "never" in run["message"]


def test_max_running_admits_one_at_a_time(server: Server) -> None:
    ids = [server.schedule("one at a time") for _ in range(5)]
    runs = [server.wait_finished(r, 20) for r in ids]
    assert [r["state"] for r in runs] == ["success"] * 5
    spans = sorted((_ts(r["times"]["starting"]), _ts(r["times"]["success"])) for r in runs)
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end, spans
    waited = "at most 1 run(s) of one at a time at a time: waiting for one to end"
    assert waited in _log(server, runs[-1]["run_id"])


def test_skip_duplicate(server: Server) -> None:
    first = server.schedule("dedupe", {"k": "1"})
    server.wait_state(first, "running")
    second = server.wait_finished(server.schedule("dedupe", {"k": "1"}))
    assert second["state"] == "skipped" and "same args" in second["message"]
    other = server.schedule("dedupe", {"k": "2"})
    assert server.wait_state(other, {"starting", "running"})
    assert server.wait_finished(first)["state"] == "success"


def test_timeout_is_failure(server: Server) -> None:
    run = server.wait_finished(server.schedule("timeout"), 10)
    assert run["state"] == "failure" and "timed out" in run["message"]
    assert "stopping" in run["times"]


def test_stop_escalates_to_sigkill_and_empties_the_group(server: Server) -> None:
    run_id = server.schedule("stubborn")
    server.wait_state(run_id, "running")
    pgid: int = wait_for(lambda: server.meta(run_id).get("pgid"), 5, "pgid")
    time.sleep(0.2)  # let bash set its trap before the stop arrives
    server.post(f"/runs/{run_id}/stop")
    run = server.wait_finished(run_id, 10)
    assert run["state"] == "failure" and "grace" in run["message"], run
    assert server.meta(run_id)["signal"] == "SIGKILL"
    assert not group_alive(pgid)


def test_a_stop_kills_what_the_program_leaves_at_the_deadline(server: Server) -> None:
    """The program ends at SIGTERM but its child ignores it: the run is over, and
    the child gets SIGKILL when the grace period ends (spec 03: after a stop the
    group must be empty)."""
    run_id = server.schedule("leaves a child")
    server.wait_state(run_id, "running")
    pgid: int = wait_for(lambda: server.meta(run_id).get("pgid"), 5, "pgid")
    time.sleep(0.3)  # let the child set its trap
    server.post(f"/runs/{run_id}/stop")
    run = server.wait_finished(run_id, 10)
    assert run["state"] == "success" and "SIGTERM" in run["message"], run
    wait_for(lambda: not group_alive(pgid), 5, "the child to be killed at the deadline")


def test_operations_and_409(server: Server) -> None:
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    scheduled = server.post("/runs", {"job_id": "later", "time": later})["run"]["run_id"]
    assert server.run(scheduled)["state"] == "scheduled"
    for op in ("stop", "kill", "rerun"):
        response = server.api("POST", f"/runs/{scheduled}/{op}")
        assert response.status_code == 409 and "scheduled" in response.json()["error"], op
    assert server.post(f"/runs/{scheduled}/skip")["run"]["state"] == "skipped"
    assert server.api("POST", f"/runs/{scheduled}/start").status_code == 409
    marked = server.post(f"/runs/{scheduled}/mark/success", {"message": "done elsewhere"})
    assert marked["run"]["state"] == "success"
    assert "done elsewhere" in _log(server, scheduled)[-1]
    rerun = server.post(f"/runs/{scheduled}/rerun")["run"]
    assert rerun["rerun_of"] == scheduled
    assert server.wait_finished(rerun["run_id"])["state"] == "success"

    other = server.post("/runs", {"job_id": "later", "time": later})["run"]["run_id"]
    assert server.post(f"/runs/{other}/start")["run"]["state"] in ("starting", "running", "success")
    assert server.wait_finished(other)["state"] == "success"

    sleepy = server.schedule("sleepy")
    server.wait_state(sleepy, "running")
    assert server.api("POST", f"/runs/{sleepy}/skip").status_code == 409
    server.post(f"/runs/{sleepy}/signal/SIGUSR1")
    run = server.wait_finished(sleepy)
    assert run["state"] == "failure" and "SIGUSR1" in run["message"]

    killed = server.schedule("sleepy")
    server.wait_state(killed, "running")
    server.post(f"/runs/{killed}/kill")
    assert "SIGKILL" in server.wait_finished(killed)["message"]

    wedged = server.post("/runs", {"job_id": "later", "time": later})["run"]["run_id"]
    assert server.post(f"/runs/{wedged}/error", {"message": "wedged"})["run"]["state"] == "error"
    assert server.api("POST", f"/runs/{wedged}/mark/running").status_code == 400


def test_error_by_hand_kills_the_program(server: Server) -> None:
    run_id = server.schedule("sleepy")
    server.wait_state(run_id, "running")
    pgid: int = wait_for(lambda: server.meta(run_id).get("pgid"), 5, "pgid")
    assert server.post(f"/runs/{run_id}/error", {"message": "wedged"})["run"]["state"] == "error"
    wait_for(lambda: not group_alive(pgid), 5, "the program to be killed")
    assert any("killing its process" in m for m in _log(server, run_id))
    assert server.run(run_id)["state"] == "error"  # its exit changes nothing


def test_an_ad_hoc_program_run_cannot_be_rerun(server: Server) -> None:
    run = server.post("/runs", {"program": {"type": "program", "argv": ["/bin/true"]}})["run"]
    server.wait_finished(run["run_id"])
    response = server.api("POST", f"/runs/{run['run_id']}/rerun")
    assert response.status_code == 409 and "given directly" in response.json()["error"]
    assert _log(server, run["run_id"])[0] == "ad-hoc program scheduled by hand"


def test_scheduling_bad_input_creates_nothing(server: Server) -> None:
    def count() -> int:
        return len(server.get("/runs", params={"job_id": "later", "limit": 1000})["runs"])

    before = count()
    bad = [
        ("/runs?wait=abc", {"job_id": "later"}, "wait must be a number"),
        ("/runs?wait=nan", {"job_id": "later"}, "finite"),
        ("/runs", {"job_id": "dep/first", "args": {"d": None}}, "must be text"),
        ("/runs", {"job_id": "dep/first", "args": {"d": {"a": 1}}}, "must be text"),
        ("/runs", {"program": "true", "args": {"d": "1"}}, "no params"),
    ]
    for path, body, message in bad:
        response = server.api("POST", path, json=body)
        assert response.status_code == 400 and message in response.json()["error"], body
    assert count() == before


def test_retry_with_backoff_stops_at_max(server: Server) -> None:
    first = server.schedule("flaky")
    assert server.wait_finished(first)["state"] == "failure"

    def chain() -> list[dict[str, Any]] | None:
        runs = server.get("/runs", params={"job_id": "flaky", "limit": 10})["runs"]
        done = [r for r in runs if r["state"] == "failure"]
        return done if len(done) == 3 else None

    runs = sorted(wait_for(chain, 10, "two retries"), key=lambda r: int(r["run_id"][1:]))
    assert [r["rerun_of"] for r in runs] == [None, runs[0]["run_id"], runs[1]["run_id"]]
    gaps = [
        _ts(runs[i + 1]["times"]["running"]) - _ts(runs[i]["times"]["failure"]) for i in range(2)
    ]
    assert gaps[0] >= 0.2 and gaps[1] >= 0.4, gaps
    assert any("no more retries" in m for m in _log(server, runs[2]["run_id"]))
    assert len(server.get("/runs", params={"job_id": "flaky"})["runs"]) == 3


def test_schedule_action_passes_args(server: Server) -> None:
    source = server.schedule("follow/source", {"x": "42"})
    server.wait_finished(source)
    note = wait_for(
        lambda: [m for m in _log(server, source) if m.startswith("schedule action")], 5, "action"
    )
    target = note[0].split()[2]
    assert server.wait_finished(target)["state"] == "success"
    assert server.output(target) == b"target 42\n"
    assert any(source in m for m in _log(server, target))


def test_dependent_starts_promptly(server: Server) -> None:
    second = server.schedule("dep/second", {"d": "1"})
    assert server.run(second)["state"] == "waiting"
    first = server.schedule("dep/first", {"d": "1"})
    a = server.wait_finished(first)
    b = server.wait_state(second, {"starting", "running", "success"})
    lag = _ts(b["times"]["starting"]) - _ts(a["times"]["success"])
    assert 0 <= lag < 0.1, lag


def test_webhook_action_retried_after_failure(tmp_path: Path) -> None:
    with WebhookSink(refuse=1, status=500) as hook:
        jobs = {"notify": f"program: 'true'\naction: {{type: webhook, url: '{hook.url()}'}}\n"}
        with running_server(tmp_path, jobs) as server:
            run_id = server.schedule("notify")
            server.wait_finished(run_id)
            wait_for(lambda: hook.received, 10, "the webhook")
            assert hook.received[0]["run"]["run_id"] == run_id
            log = wait_for(
                lambda: [m for m in _log(server, run_id) if "delivered" in m], 5, "delivery log"
            )
            assert "attempt 2" in log[0]
            assert any("failed (HTTP 500)" in m for m in _log(server, run_id))


def test_dependencies_view(server: Server) -> None:
    waiting = server.schedule("dep/second", {"d": "9"})
    assert server.run(waiting)["state"] == "waiting"
    view = server.get(f"/runs/{waiting}/dependencies")
    assert view["waits_for"][0]["job_id"] == "dep/first"
    assert view["waits_for"][0]["args"] == {"d": "9"}
    assert view["waits_for"][0]["satisfied"] is False
    shown = subprocess.run(
        [sys.executable, "-m", "cli.main", "--server", server.url, "run", waiting],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert "depends on dep/first d=9 (waiting): no run yet" in shown
    first = server.schedule("dep/first", {"d": "9"})
    server.wait_finished(first)
    server.wait_finished(waiting)
    done = server.get(f"/runs/{waiting}/dependencies")["waits_for"][0]
    assert done["satisfied"] is True and done["runs"][0]["run_id"] == first
    late = server.schedule("dep/second", {"d": "10"})
    other = server.post(
        "/runs", {"job_id": "dep/first", "args": {"d": "10"}, "time": "2099-01-01T00:00:00Z"}
    )["run"]["run_id"]
    assert server.get(f"/runs/{other}/dependencies")["waited_by"] == [late]
    server.post(f"/runs/{other}/start")
    server.wait_finished(late)


def test_odd_signal_names_are_bad_input(server: Server) -> None:
    run_id = server.schedule("sleepy")
    server.wait_state(run_id, "running")
    for name in ("%C2%B2", "SIGNOPE", "0", "999"):
        assert server.api("POST", f"/runs/{run_id}/signal/{name}").status_code == 400, name
    server.post(f"/runs/{run_id}/kill")
    server.wait_finished(run_id)


def test_stop_schedule_stops_the_run_at_its_stop_time(tmp_path: Path) -> None:
    """`stop: {type: duration}`: the run is stopped that long after its schedule
    time, with its program's stop signal; ended by it, the run is a success."""
    job = (
        "program: {type: program, argv: [/bin/sleep, '30']}\n"
        "schedule:\n  start: {type: interval, interval: 3}\n"
        "  stop: {type: duration, duration: 1.5s}\n"
    )
    unfinished = ("scheduled", "waiting", "starting", "running", "stopping")
    with running_server(tmp_path, {"market": job}) as server:

        def ended() -> dict[str, Any] | None:
            runs = server.get("/runs", params={"job_id": "market", "limit": 100})["runs"]
            return next((r for r in runs if r["state"] not in unfinished), None)

        run = wait_for(ended, 15, "a run to end")
        assert run["state"] == "success" and run["message"] == "stopped; killed by SIGTERM", run
        stopped_after = _ts(run["times"]["stopping"]) - _ts(run["schedule_time"])
        assert 1.5 <= stopped_after < 2.0, run
        assert 1.5 <= _ts(run["stop_time"]) - _ts(run["schedule_time"]) < 2.0, run
        runs = server.get("/runs", params={"job_id": "market", "state": "scheduled"})["runs"]
        assert runs and all(  # planned stop times are shown ahead
            _ts(r["stop_time"]) == _ts(r["schedule_time"]) + 1.5 for r in runs
        ), runs
        assert "stop time reached" in _log(server, run["run_id"])
        assert not group_alive(server.meta(run["run_id"])["pgid"])


def test_runs_of_a_job_never_heard_of_are_a_404(server: Server) -> None:
    assert server.api("GET", "/jobs/no/such/job/runs").status_code == 404
    assert server.get("/jobs/later/runs")["runs"] is not None
