"""Plugins end to end: the example plugin package (tests/plugins/apsis_example),
installed in the test virtualenv, gives a real server one type of each kind, and
jobs use each: its program runs on the agent, its schedule makes runs, its
condition holds a run and lets it go, its action fires, its template function
expands in a command."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from tests.harness import running_server, wait_for

JOBS = {
    "echo": (
        "params: [who]\n"
        "program: {type: example-echo, words: [hello, '{{ shout(who) }}'],"
        " env: {vars: {GREETING: hi}}}\n"
    ),
    "shouted": "params: [who]\nprogram: 'echo {{ shout(who) }} $EXAMPLE_PLUGIN.'\n",
    "ticking": "program: 'true'\nschedule: {type: example-every, seconds: 2}\n",
    "trigger": "program: 'true'\n",
    "gated": "program: 'true'\ncondition: {type: example-after, job_id: trigger}\n",
}


def _messages(server: Any, run_id: str) -> list[str]:
    return [e["message"] for e in server.get(f"/runs/{run_id}/log")["log"]]


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_each_kind_of_plugin_in_a_job(tmp_path: Path, example_plugin: Path) -> None:
    record = tmp_path / "record.txt"
    jobs = {
        **JOBS,
        "recorded": f"program: 'true'\naction: {{type: example-record, path: '{record}'}}\n",
    }
    with running_server(tmp_path, jobs) as server:
        assert server.get("/jobs")["errors"] == []
        assert "plugin loaded: apsis.programs: example-echo" in server.log()

        # A plugin program, with a plugin template function in its words, on the agent.
        run_id = server.schedule("echo", {"who": "world"})
        assert server.wait_finished(run_id)["state"] == "success"
        assert server.output(run_id) == b"hello WORLD!\n"
        job = server.get("/jobs/echo")["job"]
        assert job["program"]["type"] == "example-echo"
        assert job["program"]["words"] == ["hello", "{{ shout(who) }}"]

        # A plugin program given directly (an ad-hoc run).
        body = {"program": {"type": "example-echo", "words": ["ad", "hoc"], "upper": True}}
        run_id = server.post("/runs", body)["run"]["run_id"]
        assert server.wait_finished(run_id)["state"] == "success"
        assert server.output(run_id) == b"AD HOC\n"

        # The template function in a shell command.
        run_id = server.schedule("shouted", {"who": "there"})
        assert server.wait_finished(run_id)["state"] == "success"
        assert server.output(run_id) == b"THERE! .\n"

        # A plugin schedule: runs at its times (every multiple of 2 s).
        def ticked() -> list[dict[str, Any]] | None:
            runs = server.get("/runs", params={"job_id": "ticking", "limit": 100})["runs"]
            done = [r for r in runs if r["state"] == "success"]
            return done if len(done) >= 2 else None

        done = wait_for(ticked, 20, "two runs of the plugin schedule")
        assert all(_epoch(r["schedule_time"]) % 2 == 0 for r in done)
        assert all(r["origin"] == "schedule" for r in done)
        (schedule,) = server.get("/jobs/ticking")["job"]["schedules"]
        assert schedule["type"] == "example-every"
        assert schedule["text"] == "every 2 seconds (example)"

        # A plugin condition holds a run until a run of `trigger` succeeds.
        gated = server.schedule("gated")
        server.wait_state(gated, "waiting")
        assert "waiting for a success of trigger" in _messages(server, gated)
        assert server.get("/jobs/gated")["job"]["conditions"] == [
            {"type": "example-after", "job_id": "trigger"}
        ]
        trigger = server.schedule("trigger")
        assert server.wait_finished(trigger)["state"] == "success"
        assert server.wait_finished(gated)["state"] == "success"

        # A plugin action fires when a run finishes; what it says is in the run log.
        run_id = server.schedule("recorded")
        assert server.wait_finished(run_id)["state"] == "success"
        wait_for(lambda: record.exists() and record.read_text(), 10, "the action's record")
        assert record.read_text() == f"{run_id} recorded success\n"
        wait_for(
            lambda: (
                f"example-record action done: recorded in {record}" in _messages(server, run_id)
            ),
            10,
            "the action's outcome in the run log",
        )
