"""The CLI's pure parts: job matching, run ids, times, args, settings, rendering."""

from __future__ import annotations

import base64
import datetime
from pathlib import Path

import pytest
from rich.console import Console

from apsis_common.errors import NotFound
from apsis_common.times import parse_time
from cli import arguments, render
from cli.commands.operations import signal_name
from cli.commands.output import last_lines
from cli.config import load_settings
from cli.errors import Ambiguous, UsageError
from cli.feeds import FeedClient, LogAdded, OutputAdded, RunFeed, feed_url

pytestmark = pytest.mark.timeout(10)

JOBS = ["demo/hello", "demo/hello world", "etl/load daily", "etl/load hourly", "x/a b c"]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("demo/hello", "demo/hello"),
        ("demo/hello world", "demo/hello world"),
        ("demo/hello w", "demo/hello world"),
        ("etl/load h", "etl/load hourly"),
        ("load hour", "etl/load hourly"),
        ("ETL DAILY", "etl/load daily"),
        ("x c", "x/a b c"),
    ],
)
def test_match_job(query: str, expected: str) -> None:
    assert arguments.match_job(query, JOBS) == expected


@pytest.mark.parametrize(
    ("query", "candidates"),
    [
        ("demo", ("demo/hello", "demo/hello world")),
        ("etl/load", ("etl/load daily", "etl/load hourly")),
        ("load", ("etl/load daily", "etl/load hourly")),
    ],
)
def test_match_job_ambiguous(query: str, candidates: tuple[str, ...]) -> None:
    with pytest.raises(Ambiguous) as info:
        arguments.match_job(query, JOBS)
    assert info.value.candidates == candidates


@pytest.mark.parametrize("query", ["hourly load", "nothing", "c x"])
def test_match_job_not_found(query: str) -> None:
    with pytest.raises(NotFound):
        arguments.match_job(query, JOBS)


@pytest.mark.parametrize(("text", "run_id"), [("r42", "r42"), ("42", "r42"), (" 7 ", "r7")])
def test_run_id(text: str, run_id: str) -> None:
    assert arguments.run_id(text) == run_id


@pytest.mark.parametrize("text", ["", "r", "x42", "r4x", "-1"])
def test_bad_run_id(text: str) -> None:
    with pytest.raises(UsageError):
        arguments.run_id(text)


NOW = parse_time("2026-11-26T21:00:00Z")


@pytest.mark.parametrize(
    ("text", "past", "expected"),
    [
        ("now", True, "2026-11-26T21:00:00.000000Z"),
        ("2027-01-01T00:00:00Z", False, "2027-01-01T00:00:00.000000Z"),
        ("2027-01-01T01:00:00+01:00", False, "2027-01-01T00:00:00.000000Z"),
        ("1h", True, "2026-11-26T20:00:00.000000Z"),
        ("10 min", False, "2026-11-26T21:10:00.000000Z"),
        ("+10m", True, "2026-11-26T21:10:00.000000Z"),
        ("-1d", False, "2026-11-25T21:00:00.000000Z"),
        ("2h ago", True, "2026-11-26T19:00:00.000000Z"),
    ],
)
def test_when(text: str, past: bool, expected: str) -> None:
    assert arguments.when(text, NOW, past=past) == expected


def test_when_local_time() -> None:
    local = datetime.datetime(2027, 1, 1, 12, 0).astimezone().timestamp()
    assert parse_time(arguments.when("2027-01-01 12:00", NOW, past=False)) == local


@pytest.mark.parametrize("text", ["tomorrowish", "10 parsecs", ""])
def test_bad_when(text: str) -> None:
    with pytest.raises(UsageError):
        arguments.when(text, NOW, past=True)


def test_run_args() -> None:
    assert arguments.run_args(["a=1", "b=x=y", "c="]) == {"a": "1", "b": "x=y", "c": ""}
    with pytest.raises(UsageError):
        arguments.run_args(["novalue"])


def test_states() -> None:
    assert arguments.states("failure, ERROR") == "failure,error"
    with pytest.raises(UsageError):
        arguments.states("failed")


@pytest.mark.parametrize(
    ("text", "name"), [("TERM", "SIGTERM"), ("sigusr1", "SIGUSR1"), ("9", "SIGKILL")]
)
def test_signal_name(text: str, name: str) -> None:
    assert signal_name(text) == name


@pytest.mark.parametrize(
    ("data", "count", "complete", "expected"),
    [
        (b"a\nb\nc\n", 2, True, b"b\nc\n"),
        (b"a\nb\nc", 2, True, b"b\nc"),
        (b"a\nb\n", 5, True, b"a\nb\n"),
        (b"a\nb\n", 2, False, None),  # the first line may be cut: fetch more
        (b"xa\nb\nc\n", 2, False, b"b\nc\n"),
        (b"a\nb\n", 0, True, b""),
        (b"", 3, True, b""),
    ],
)
def test_last_lines(data: bytes, count: int, complete: bool, expected: bytes | None) -> None:
    assert last_lines(data, count, complete) == expected


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "-"),
        (0.0003, "0.3 ms"),
        (0.012, "12 ms"),
        (1.0, "1s"),
        (4.25, "4.2s"),
        (42, "42s"),
        (60, "1m"),
        (63, "1m 3s"),
        (7500, "2h 5m"),
        (7799, "2h 9m"),  # two units: rounded down, never "2h 9m 59s"
        (273600, "3d 4h"),
    ],
)
def test_duration(seconds: float | None, text: str) -> None:
    assert render.duration(seconds) == text


@pytest.mark.parametrize(
    ("delta", "text"), [(0.2, "now"), (-5, "5s ago"), (10, "in 10s"), (-3600, "1h ago")]
)
def test_relative(delta: float, text: str) -> None:
    assert render.relative(NOW + delta, NOW) == text


def _text(renderable: object) -> str:
    console = Console(width=200, no_color=True)
    with console.capture() as capture:
        console.print(renderable)
    return capture.get()


def test_runs_table_escapes_markup() -> None:
    run = {"run_id": "r1", "job_id": "[bold]x[/bold]", "state": "success", "args": {"a": "[b]"}}
    out = _text(render.runs_table([run], NOW))
    assert "[bold]x[/bold]" in out
    assert "a=[b]" in out


def test_settings_precedence(tmp_path: Path) -> None:
    config = tmp_path / "apsis" / "config.yaml"
    config.parent.mkdir()
    config.write_text("server: https://file:1\ntoken: file-token\n")
    env = {"XDG_CONFIG_HOME": str(tmp_path)}
    assert load_settings(None, None, None, env).server == "https://file:1"
    assert load_settings(None, None, None, env).token == "file-token"
    env |= {"APSIS_SERVER": "env:2", "APSIS_TOKEN": "env-token"}
    assert load_settings(None, None, None, env).server == "http://env:2"
    assert load_settings("http://flag:3/", "t", None, env) == load_settings(
        "http://flag:3", "t", None, {}
    )
    assert load_settings(None, None, None, {"HOME": str(tmp_path)}).server == (
        "http://127.0.0.1:5005"
    )


def test_bad_config_file(tmp_path: Path) -> None:
    config = tmp_path / "apsis" / "config.yaml"
    config.parent.mkdir()
    config.write_text("- a list\n")
    with pytest.raises(UsageError):
        load_settings(None, None, None, {"XDG_CONFIG_HOME": str(tmp_path)})


@pytest.mark.parametrize(
    ("base", "params", "url"),
    [
        ("http://h:1", None, "ws://h:1/api/v1/summary"),
        ("https://h:1", None, "wss://h:1/api/v1/summary"),
        ("http://h:1", {"offset": 5}, "ws://h:1/api/v1/summary?offset=5"),
    ],
)
def test_feed_url(base: str, params: dict[str, str | int] | None, url: str) -> None:
    assert feed_url(base, "/api/v1/summary", params) == url


def _out(offset: int, data: bytes) -> dict[str, object]:
    return {"type": "output", "offset": offset, "data": base64.b64encode(data).decode()}


def test_run_feed_gives_each_byte_and_log_entry_once() -> None:
    feed = RunFeed(FeedClient("http://h:1"), "r1", offset=0)
    entry = {"time": "t", "state": "running", "message": "m"}
    assert feed.apply({"type": "log", "entries": [entry]}, first_log=True) == LogAdded([entry])
    assert feed.apply(_out(0, b"abc"), first_log=False) == OutputAdded(0, b"abc")
    # A reconnection repeats the whole log and maybe some output: only what is new.
    assert feed.apply({"type": "log", "entries": [entry, entry]}, first_log=True) == LogAdded(
        [entry]
    )
    assert feed.apply(_out(1, b"bcde"), first_log=False) == OutputAdded(3, b"de")
    assert feed.apply(_out(0, b"ab"), first_log=False) is None
    assert feed.apply(_out(5, b""), first_log=False) is None
    assert (feed.offset, len(feed.log)) == (5, 2)


def test_run_feed_without_old_output_starts_where_the_server_says() -> None:
    feed = RunFeed(FeedClient("http://h:1"), "r1", offset=None)
    assert not feed.ready
    assert feed.apply(_out(42, b""), first_log=False) == OutputAdded(42, b"")
    assert feed.ready and feed.offset == 42
