"""The `apsis` CLI end to end against a stand-in API served over real HTTP."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.main import main
from tests.cli_fixture import FakeApi, make_run, sample, serving

pytestmark = pytest.mark.timeout(10)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("APSIS_SERVER", "APSIS_TOKEN", "APSIS_CA"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


@pytest.fixture
def api() -> Iterator[FakeApi]:
    with serving(sample()) as served:
        yield served


def apsis(api: FakeApi, *args: str) -> int:
    return main(["--server", api.url, "--poll", "0.01", *args])


def test_jobs_tree_shows_jobs_and_errors(api: FakeApi, capsys: pytest.CaptureFixture[str]) -> None:
    assert apsis(api, "jobs") == 0
    out = capsys.readouterr().out
    for text in ("demo/", "hello world", "load daily", "monthly summary", "every 10s", "bad/job"):
        assert text in out


def test_jobs_path_and_json(api: FakeApi, capsys: pytest.CaptureFixture[str]) -> None:
    assert apsis(api, "jobs", "etl", "--json") == 0
    answer = json.loads(capsys.readouterr().out)
    assert [j["job_id"] for j in answer["jobs"]] == ["etl/load daily", "etl/load hourly"]


def test_runs_table(api: FakeApi, capsys: pytest.CaptureFixture[str]) -> None:
    assert apsis(api, "runs") == 0
    out = capsys.readouterr().out
    for text in ("r1", "r6", "success", "failure", "error", "skipped", "date=2026-11-26"):
        assert text in out
    assert apsis(api, "runs", "--times") == 0
    assert "r3" in capsys.readouterr().out


def test_runs_json_and_filters(api: FakeApi, capsys: pytest.CaptureFixture[str]) -> None:
    assert apsis(api, "runs", "--json", "--state", "failure,error") == 0
    answer = json.loads(capsys.readouterr().out)
    assert sorted(r["run_id"] for r in answer["runs"]) == ["r2", "r3"]
    assert apsis(api, "runs", "--json", "etl hour") == 0
    assert [r["run_id"] for r in json.loads(capsys.readouterr().out)["runs"]] == ["r4"]
    assert apsis(api, "runs", "--json", "--limit", "2") == 0
    assert len(json.loads(capsys.readouterr().out)["runs"]) == 2


@pytest.mark.parametrize(
    ("query", "job_id"),
    [
        ("demo/hello", "demo/hello"),  # exact, though also a prefix of another
        ("demo/hello world", "demo/hello world"),  # exact, with a space
        ("rep", "reports/monthly summary"),  # unique prefix
        ("etl/load d", "etl/load daily"),  # unique prefix
        ("etl hourly", "etl/load hourly"),  # fuzzy: words in order
        ("MONTH summ", "reports/monthly summary"),  # fuzzy ignores case
    ],
)
def test_job_matching(
    api: FakeApi, capsys: pytest.CaptureFixture[str], query: str, job_id: str
) -> None:
    assert apsis(api, "job", query, "--json") == 0
    assert json.loads(capsys.readouterr().out)["job"]["job_id"] == job_id


@pytest.mark.parametrize("query", ["etl", "demo/h", "load"])
def test_ambiguous_job_lists_candidates(
    api: FakeApi, capsys: pytest.CaptureFixture[str], query: str
) -> None:
    assert apsis(api, "job", query) == 2
    err = capsys.readouterr().err
    assert "ambiguous" in err
    assert err.count("\n  ") >= 2


def test_unknown_job(api: FakeApi, capsys: pytest.CaptureFixture[str]) -> None:
    assert apsis(api, "job", "daily hourly") == 1
    assert "no job matches" in capsys.readouterr().err


def test_job_that_failed_to_load(api: FakeApi, capsys: pytest.CaptureFixture[str]) -> None:
    assert apsis(api, "job", "bad/job") == 1
    err = capsys.readouterr().err
    assert "failed to load" in err
    assert "expected a duration" in err


def test_job_details(api: FakeApi, capsys: pytest.CaptureFixture[str]) -> None:
    assert apsis(api, "job", "demo/hello") == 0
    out = capsys.readouterr().out
    for text in ("echo hello", "every 10s", "next times", "recent runs", "r2", "failure"):
        assert text in out


def test_job_kept_after_its_file_broke(api: FakeApi, capsys: pytest.CaptureFixture[str]) -> None:
    api.job_errors.append(
        {
            "job_id": "demo/hello",
            "path": "demo/hello.yaml",
            "key_path": "shedule",
            "message": "unknown key (expected one of: ...)",
        }
    )
    assert apsis(api, "job", "demo/hello") == 0
    out = capsys.readouterr().out
    assert "echo hello" in out and "no longer loads" in out and "shedule" in out


def test_run_details_and_log(api: FakeApi, capsys: pytest.CaptureFixture[str]) -> None:
    assert apsis(api, "run", "5") == 0
    out = capsys.readouterr().out
    for text in ("r5", "demo/hello world", "scheduled", "created", "date=2026-11-26"):
        assert text in out
    assert apsis(api, "run", "r1", "--json") == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["run"]["state"] == "success"
    assert answer["log"][0]["message"] == "created"


@pytest.mark.parametrize(("run", "code"), [("r1", 0), ("r2", 1), ("r3", 2), ("r4", 2), ("6", 0)])
def test_wait_exit_codes(
    api: FakeApi, capsys: pytest.CaptureFixture[str], run: str, code: int
) -> None:
    assert apsis(api, "wait", run) == code


def test_output_writes_exact_bytes(
    api: FakeApi, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    data = bytes(range(256)) + b"\r\n\x1b[31mred\x1b[0m\nno newline"
    api.add_run(make_run("r9", "demo/hello", "success"), data)
    assert apsis(api, "output", "r9") == 0
    assert capsysbinary.readouterr().out == data


@pytest.mark.parametrize(
    ("run_id", "hint"),
    [
        ("r5", "r5 (demo/hello world) is scheduled, due "),
        ("r3", "r3 ended error without writing any output"),
    ],
)
def test_output_says_why_there_is_none(
    api: FakeApi, capfd: pytest.CaptureFixture[str], run_id: str, hint: str
) -> None:
    assert apsis(api, "output", run_id) == 0
    out, err = capfd.readouterr()
    assert out == ""
    assert hint in err


def test_output_tail(api: FakeApi, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    api.add_run(make_run("r9", "demo/hello", "success"), b"one\ntwo\nthree\nfour\n")
    assert apsis(api, "output", "r9", "--tail", "2") == 0
    assert capsysbinary.readouterr().out == b"three\nfour\n"


def test_output_follow_until_finished(
    api: FakeApi, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    assert apsis(api, "output", "r6", "--follow") == 0
    assert capsysbinary.readouterr().out == b"partial[end]\n"


def test_log_follow(api: FakeApi, capsys: pytest.CaptureFixture[str]) -> None:
    assert apsis(api, "log", "r6", "--follow") == 0
    out = capsys.readouterr().out
    assert "created" in out
    assert "finished success" in out


def test_schedule_and_wait(api: FakeApi, capsys: pytest.CaptureFixture[str]) -> None:
    assert apsis(api, "schedule", "monthly", "date=2026-11-26", "--wait") == 0
    assert api.created[-1] == {
        "job_id": "reports/monthly summary",
        "args": {"date": "2026-11-26"},
        "time": None,
    }
    assert "success" in capsys.readouterr().out


def test_schedule_output(api: FakeApi, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    assert apsis(api, "schedule", "demo/hello", "--output") == 0
    assert capsysbinary.readouterr().out == b"output of demo/hello\n[end]\n"


def test_schedule_at_a_time(api: FakeApi, capsys: pytest.CaptureFixture[str]) -> None:
    assert apsis(api, "schedule", "demo/hello", "--time", "2027-01-01T00:00:00Z", "--json") == 0
    assert api.created[-1]["time"] == "2027-01-01T00:00:00.000000Z"
    assert json.loads(capsys.readouterr().out)["run"]["run_id"] == "r7"


def test_adhoc(api: FakeApi, capsys: pytest.CaptureFixture[str]) -> None:
    assert apsis(api, "adhoc", "echo hi there", "--host", "w1") == 0
    assert api.created[-1]["program"] == {"type": "shell", "command": "echo hi there", "host": "w1"}
    # The server files ad-hoc runs under the job id `adhoc`, which is no job to name.
    assert "r7 (ad hoc): running" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "state"),
    [
        (("start", "r5"), "running"),
        (("skip", "r5"), "skipped"),
        (("stop", "r6"), "failure"),
        (("kill", "r6"), "failure"),
        (("mark", "r2", "success"), "success"),
    ],
)
def test_operations(
    api: FakeApi, capsys: pytest.CaptureFixture[str], args: tuple[str, ...], state: str
) -> None:
    assert apsis(api, *args, "--json") == 0
    assert json.loads(capsys.readouterr().out)["run"]["state"] == state


def test_rerun_and_signal(api: FakeApi, capsys: pytest.CaptureFixture[str]) -> None:
    assert apsis(api, "rerun", "r2") == 0
    assert "r7 demo/hello: scheduled" in capsys.readouterr().out
    assert apsis(api, "signal", "r6", "usr1") == 0
    assert api.requests[-1][1] == "/api/v1/runs/r6/signal/SIGUSR1"


def test_conflict_prints_server_message(api: FakeApi, capsys: pytest.CaptureFixture[str]) -> None:
    assert apsis(api, "start", "r1") == 1
    err = capsys.readouterr().err
    assert "cannot start run r1: it is success" in err
    assert "Traceback" not in err


def test_unknown_run(api: FakeApi, capsys: pytest.CaptureFixture[str]) -> None:
    assert apsis(api, "run", "r99") == 1
    assert "unknown run: r99" in capsys.readouterr().err


def test_unreachable_server(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    assert main(["--server", url, "runs"]) == 1
    err = capsys.readouterr().err
    assert url in err
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    "args",
    [("run", "x1"), ("mark", "r1", "bogus"), ("signal", "r6", "NOPE"), ("frobnicate",), ()],
)
def test_usage_errors(api: FakeApi, args: tuple[str, ...]) -> None:
    assert apsis(api, *args) == 2


def test_token_from_env(
    api: FakeApi, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    api.token = "s3cret"
    assert apsis(api, "agents") == 1
    assert "missing or wrong token" in capsys.readouterr().err
    monkeypatch.setenv("APSIS_TOKEN", "s3cret")
    assert apsis(api, "agents") == 0
    assert api.requests[-1][2] == "Bearer s3cret"
    assert "connected" in capsys.readouterr().out


def test_server_from_config_file(
    api: FakeApi, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config" / "apsis" / "config.yaml"
    config.parent.mkdir(parents=True)
    config.write_text(f"server: {api.url}\ntoken: abc\n")
    assert main(["runs", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["runs"]) == 6
    assert api.requests[-1][2] == "Bearer abc"


def test_reload_reports_errors(api: FakeApi, capsys: pytest.CaptureFixture[str]) -> None:
    assert apsis(api, "reload") == 1
    out = capsys.readouterr().out
    assert "demo/new" in out
    assert "bad/job" in out


def test_watch_run_until_finished(api: FakeApi, capsys: pytest.CaptureFixture[str]) -> None:
    assert apsis(api, "watch", "r6") == 0
    out = capsys.readouterr().out
    assert "r6" in out
    assert "finished success" in out
