"""`GET /metrics` from a real server after real runs, read with a small parser of the
Prometheus text format; and `GET /api/v1/stats`."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator

import httpx
import pytest

from tests.harness import Server, running_server, wait_for

pytestmark = pytest.mark.timeout(60)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')

JOBS = {
    "ok": "program: {type: shell, command: 'echo ok'}\n",
    "bad": "program: {type: shell, command: 'exit 3'}\n",
}


def parse(text: str) -> tuple[Samples, dict[str, str]]:
    """Samples by (name, labels), and each family's type; checks the format as it goes."""
    samples: Samples = {}
    types: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            name, kind = line.split()[2:4]
            assert name not in types, f"family {name} declared twice"
            types[name] = kind
            continue
        if line.startswith("#") or not line:
            continue
        match = SAMPLE.match(line)
        assert match, f"not a sample line: {line!r}"
        name, _, labels, value = match.groups()
        family = re.sub(r"_(bucket|sum|count)$", "", name) if name not in types else name
        assert family in types, f"{name} has no TYPE line before it"
        pairs = frozenset(LABEL.findall(labels or ""))
        assert (name, pairs) not in samples, f"duplicate sample {line!r}"
        samples[(name, pairs)] = float(value)
    return samples, types


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def check_histogram(samples: Samples, name: str) -> None:
    buckets = sorted(
        (float(dict(labels)["le"]), v)
        for (n, labels), v in samples.items()
        if n == name + "_bucket"
    )
    assert buckets[-1][0] == math.inf
    counts = [v for _, v in buckets]
    assert counts == sorted(counts), f"{name} buckets not cumulative"
    assert counts[-1] == value(samples, name + "_count")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("metrics"), JOBS) as server:
        yield server


def scrape(server: Server) -> Samples:
    response = httpx.get(server.url + "/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples, types = parse(response.text)
    for name, kind in types.items():
        if kind == "histogram":
            check_histogram(samples, name)
        if kind == "counter":
            assert name.endswith("_total"), name
    return samples


def test_counters_move_with_runs(server: Server) -> None:
    before = scrape(server)
    runs = [server.schedule("ok") for _ in range(3)] + [server.schedule("bad")]
    for run_id in runs:
        server.wait_finished(run_id)
    after = scrape(server)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    t = "apsis_run_transitions_total"
    assert moved(t, **{"from": "new", "to": "scheduled"}) == 4
    assert moved(t, **{"from": "starting", "to": "running"}) == 4
    assert moved(t, **{"from": "running", "to": "success"}) == 3
    assert moved(t, **{"from": "running", "to": "failure"}) == 1
    assert moved("apsis_schedule_lateness_seconds_count") == 4
    assert moved("apsis_store_commits_total") > 0
    assert moved("apsis_agent_event_lag_seconds_count") >= 8  # a start and an exit each
    assert moved("apsis_webhook_requests_total", status="200") > 0
    assert value(after, "apsis_jobs") == 2
    assert value(after, "apsis_runs", state="running") == 0
    assert value(after, "apsis_agents", state="connected") == 1
    assert value(after, "apsis_store_bytes") > 0
    assert value(after, "apsis_build_info", version="0.1.0") == 1


def test_loop_lag_is_measured(server: Server) -> None:
    wait_for(lambda: value(scrape(server), "apsis_event_loop_lag_seconds_count") >= 2, 5)
    samples = scrape(server)
    assert 0 <= value(samples, "apsis_event_loop_lag_max_seconds") < 1


def test_unfinished_runs_by_state(server: Server) -> None:
    run_id = server.post("/runs", {"job_id": "ok", "time": "2099-01-01T00:00:00Z"})["run"]["run_id"]
    assert value(scrape(server), "apsis_runs", state="scheduled") >= 1
    server.post(f"/runs/{run_id}/skip")
    t = "apsis_run_transitions_total"
    assert value(scrape(server), t, **{"from": "scheduled", "to": "skipped"}) >= 1


def test_stats(server: Server) -> None:
    stats = server.get("/stats")
    assert stats["jobs"] == 2
    assert stats["uptime"] > 0
    assert stats["runs_total"] >= 1
    assert stats["transitions"] > 0
    assert stats["agents"]["connected"] == 1
    assert stats["store_bytes"] > 0
    assert stats["store_error"] is None
    samples = scrape(server)
    assert value(samples, "apsis_store_writable") == 1
    # The one server on SQLite leads at epoch 0, with no lease to run out.
    assert value(samples, "apsis_leader") == 1 and ("apsis_leader_epoch", frozenset()) in samples
    assert value(samples, "apsis_leader_epoch") == 0
    assert ("apsis_lease_seconds_left", frozenset()) not in samples
    wait_for(lambda: server.get("/stats")["loop_latency"]["max"] is not None, 5)
    assert set(stats["runs"]) >= {"scheduled", "waiting", "running"}


def test_parser_reads_escapes() -> None:
    samples, _ = parse('# TYPE x gauge\nx{a="q\\"uote",b="back\\\\"} 1.5\n')
    assert value(samples, "x", a='q\\"uote', b="back\\\\") == 1.5
