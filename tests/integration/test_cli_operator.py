"""The operator's daily loop in the CLI, against the real server (issue 22): what a
run ran, what made it, times with their zone, values in words, and answers that
say one thing one way."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cli.main import main
from tests.harness import Server, running_server
from tests.integration.test_cli_live import finish, read_line

pytestmark = pytest.mark.timeout(60)

WEEKDAY = """\
params: [date]
program:
  type: shell
  command: echo report for {{ date | shquote }}
  timeout: {duration: 10 min}
  stop: {signal: SIGINT, grace_period: 90}
schedule:
  - {type: daily, daytime: "09:30", tz: America/New_York, calendar: Mon-Fri}
  - {type: daily, daytime: "12:00", tz: Europe/London, calendar: Sat, enabled: false}
"""
JOBS = {
    "ops/every weekday": WEEKDAY,
    "ops/window": (
        "program: 'sleep 600'\nschedule:\n"
        "  start: {type: interval, interval: 3600}\n"
        "  stop: {type: duration, duration: 10 min}\n"
    ),
    "demo/hello": "program: echo hello\n",
    "demo/sleep then fail": "program: 'sleep 0.1; exit 3'\n",
    "other/sleepy": "program: 'true'\n",
}
# A float printed raw: `0.00030399999999999996`.
RAW_FLOAT = re.compile(r"\d\.\d{5,}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("cli-operator"), JOBS) as server:
        yield server


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    for name in ("APSIS_SERVER", "APSIS_TOKEN", "APSIS_CA"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    # Local time here is Paris: every time shown must say which zone it is in.
    monkeypatch.setenv("TZ", "Europe/Paris")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def apsis(server: Server, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["--server", server.url, *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_runs_of_part_of_a_job_id_come_from_the_server(
    server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    for job_id in ("demo/sleep then fail", "other/sleepy", "demo/hello"):
        server.wait_finished(server.schedule(job_id))
    for _ in range(120):  # more than a page of newer runs of another job
        server.post("/runs", {"job_id": "demo/hello", "time": "2099-01-01T00:00:00Z"})
    found = server.get("/runs", params={"job": "SLEEP", "limit": "100"})["runs"]
    assert {r["job_id"] for r in found} == {"demo/sleep then fail", "other/sleepy"}
    under = server.get("/runs", params={"job": "/demo/", "limit": "1000"})["runs"]
    assert {r["job_id"] for r in under} == {"demo/sleep then fail", "demo/hello"}
    code, out, _ = apsis(server, capsys, "runs", "demo/", "--limit", "200")
    assert code == 0 and "sleep then fail" in out and "other/sleepy" not in out


def test_an_ad_hoc_run_shows_its_command(
    server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = apsis(server, capsys, "adhoc", "echo 'hi there' | tr a-z A-Z", "--wait")
    assert code == 0, out
    run_id = out.split()[0]
    assert out.startswith(f"{run_id} (ad hoc): success")
    answer = server.get(f"/runs/{run_id}")
    assert answer["program"]["command"] == "echo 'hi there' | tr a-z A-Z"
    assert answer["run"]["origin"] == "adhoc"
    code, out, _ = apsis(server, capsys, "run", run_id)
    assert "echo 'hi there' | tr a-z A-Z" in out
    assert "an ad-hoc command" in out
    assert "adhoc" not in out  # the reserved job id is no job to look up


def test_origin_tells_by_hand_from_ad_hoc(
    server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    by_hand = server.schedule("demo/hello")
    server.wait_finished(by_hand)
    rerun = server.post(f"/runs/{by_hand}/rerun")["run"]
    planned = server.get("/runs", params={"job_id": "ops/window"})["runs"][0]
    assert server.run(by_hand)["origin"] == "hand"
    assert rerun["origin"] == "rerun" and planned["origin"] == "schedule"
    code, out, _ = apsis(server, capsys, "run", by_hand)
    assert code == 0
    assert "scheduled by hand" in out and "ad hoc" not in out and "ad-hoc" not in out


def test_rerun_says_which_run_it_reran_once(
    server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    first = server.schedule("demo/hello")
    server.wait_finished(first)
    code, out, _ = apsis(server, capsys, "rerun", first)
    assert code == 0
    assert re.fullmatch(rf"r\d+ demo/hello: \w+( \(.+\))?, a rerun of {first}\n", out), out
    assert not re.search(r"\b(\w+) \(\1\)", out), out  # not "starting (starting)"


def test_a_job_in_words(server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    job = server.get("/jobs/ops/every weekday")["job"]
    assert [s["type"] for s in job["schedules"]] == ["daily", "daily"]
    assert [s["zone"] for s in job["schedules"]] == ["America/New_York", "Europe/London"]
    assert "disabled" not in job["schedules"][1]["text"]  # `enabled` says so
    window = server.get("/jobs/ops/window")["job"]["schedules"][0]
    assert (window["type"], window["stop"]) == ("interval", "stop after 10m")
    assert window["text"] == "every 1h, stop after 10m"
    code, out, _ = apsis(server, capsys, "job", "ops/every weekday")
    assert code == 0
    assert out.count("(disabled)") == 1
    assert "after 10m, with SIGTERM" in out
    assert "SIGINT, then SIGKILL after 1m 30s" in out
    assert "duration=" not in out and "signal=15" not in out
    # Next times: local (Paris) with the zone, and the schedule's own wall clock.
    assert re.search(r"\d\d:30:00 CES?T .*= 09:30:00 E[SD]T \(America/New_York\)", out), out


def test_a_finished_run_in_words(server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    run_id = server.schedule("demo/sleep then fail")
    server.wait_finished(run_id)
    code, out, _ = apsis(server, capsys, "run", run_id)
    assert code == 0
    assert not RAW_FLOAT.search(out), out
    assert re.search(r"maxrss [\d.]+ [KMG]iB", out), out
    assert re.search(r"core_dump\s+no", out), out
    assert re.search(r"created\s+\d{4}-\d\d-\d\d \d\d:\d\d:\d\d CES?T", out), out
    assert "sleep 0.1; exit 3" in out  # what it ran


def test_a_stop_time_is_shown(server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    planned = server.get("/runs", params={"job_id": "ops/window"})["runs"][0]
    assert planned["stop_time"]
    code, out, _ = apsis(server, capsys, "run", planned["run_id"])
    assert code == 0
    assert re.search(r"stop time\s+\d{4}-\d\d-\d\d \d\d:\d\d:\d\d CES?T", out), out


def test_an_unknown_run_is_named_the_same_way_everywhere(
    server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    answers = {
        apsis(server, capsys, *command)[2]
        for command in (["run", "r99999"], ["output", "r99999", "--follow"], ["wait", "r99999"])
    }
    assert answers == {"apsis: error: no run 'r99999'\n"}


def test_check_jobs_of_a_missing_directory(
    server: Server, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = tmp_path / "nonexistent"
    assert main(["check-jobs", str(missing)]) == 2
    out, err = capsys.readouterr()
    assert f"no such directory: {missing}" in err
    assert "jobs loaded" not in out + err


def test_agent_help_is_for_operators() -> None:
    agent = Path(sys.executable).parent / "apsis-agent"
    text = subprocess.run([agent, "--help"], capture_output=True, text=True, check=True).stdout
    assert "runs programs for an Apsis server" in text
    assert "Imports stay inside" not in text


def test_unknown_paths_answer_in_kind(server: Server) -> None:
    api = httpx.get(f"{server.url}/api/v1/nosuch")
    assert api.status_code == 404
    assert api.json() == {"error": "no such API path: /api/v1/nosuch"}
    wrong = httpx.delete(f"{server.url}/api/v1/runs")
    assert wrong.status_code == 405 and wrong.json()["error"].startswith("DELETE is not allowed")
    page = httpx.get(f"{server.url}/nosuch")
    assert page.status_code == 404
    assert page.headers["content-type"].startswith("text/html")
    assert '<main id="main">' in page.text  # the UI, which says there is no such page
    assert "content-security-policy" in page.headers


def test_watch_into_a_file_writes_a_line_per_change(server: Server) -> None:
    before = server.schedule("demo/hello")
    server.wait_finished(before)
    env = {k: v for k, v in os.environ.items() if not k.startswith("APSIS_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "--server", server.url, "watch", "demo/hello"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=env,
        # Ctrl-C as in a terminal: a test run in the background (`make test &`) has
        # SIGINT ignored, which its children inherit, and Python then keeps ignoring it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        seen = [read_line(proc, 10).decode()]  # the newest runs first, oldest first
        while f"{before} demo/hello: success" not in seen[-1]:
            seen.append(read_line(proc, 10).decode())
        run_id = server.schedule("demo/hello")  # then each change, as it happens
        server.wait_finished(run_id)
        while not any(f"{run_id} demo/hello: success" in line for line in seen):
            seen.append(read_line(proc, 10).decode())
        assert all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \S+  r\d+ ", line) for line in seen)
    finally:
        proc.send_signal(signal.SIGINT)
        code, _, err = finish(proc)
    assert code == 0, err
