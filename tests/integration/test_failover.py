"""Failover with real programs: servers sharing a PostgreSQL database, one static
agent (`apsis-agent serve`, provisioned by the first server, as under systemd) that
every server reaches with the same shared CA and secret. SIGKILL the leader in the
middle of a burst and while long runs stream output: a standby leads within 10 s,
every run ends once with its true result and its whole output, and no program
starts twice (each appends its run id to a file the test counts)."""

from __future__ import annotations

import collections
import shutil
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from apsis_agent.provision import provision
from apsis_agent.state import StateDir
from apsis_server.agents.events import PATH
from tests.harness import Server, kill_all_under, read_port, wait_for
from tests.sshd import agent_command

pytestmark = pytest.mark.timeout(240)

LINES = 60  # of a long run's output, one every 0.25 s: 15 s


def jobs(marks: Path) -> dict[str, str]:
    mark = f"echo {{{{ run_id }}}} >> {marks}"
    lines = f'for i in $(seq 1 {LINES}); do echo "{{{{ run_id }}}} line $i"; sleep 0.25; done'
    shell = "program: {{type: shell, host: svc, command: '{}'}}\n"
    return {
        "short": shell.format(f'{mark}; echo "short {{{{ run_id }}}}"'),
        "long": shell.format(f"{mark}; {lines}"),
    }


def long_output(run_id: str) -> bytes:
    return b"".join(f"{run_id} line {i}\n".encode() for i in range(1, LINES + 1))


class Cluster:
    """N servers on one database and the static agent they share."""

    def __init__(self, root: Path, url: str, count: int) -> None:
        self.marks = root / "marks"
        self.marks.touch()
        self.agent_dir = root / "svc-agent"
        names = "abc"[:count]
        self.servers = {n: Server(root / n, jobs(self.marks)) for n in names}
        first = self.servers["a"]
        secret = root / "svc.secret"
        provision("svc", "127.0.0.1", first.state, first.url + PATH, self.agent_dir, secret)
        self._agent = self._serve_agent(root / "svc.log")
        port = wait_for(self._agent_port, 10, "the static agent to listen")
        for name, server in self.servers.items():
            if server is not first:  # every server holds the same CA (docs/operations.md)
                shutil.copytree(first.state / "ca", server.state / "ca")
            with server.config_file.open("a") as config:
                config.write(
                    f"store: {{url: '{url}'}}\nserver: {{id: {name}}}\n"
                    "agents:\n  local: {enabled: false}\n  heartbeat: 0.5s\n  static:\n"
                    f"    svc: {{host: 127.0.0.1, port: {port}, secret_file: '{secret}'}}\n"
                )

    def _serve_agent(self, log_path: Path) -> subprocess.Popen[bytes]:
        argv = [*agent_command(), "serve", "--state-dir", str(self.agent_dir)]
        argv += ["--bind", "127.0.0.1", "--port", "0", "--heartbeat", "0.5"]
        with log_path.open("wb") as log:
            return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)

    def _agent_port(self) -> int | None:
        if self._agent.poll() is not None:
            raise AssertionError(f"the static agent exited {self._agent.returncode}")
        return read_port(StateDir(self.agent_dir).port_file)

    def leader(self, among: list[Server] | None = None) -> Server:
        def one() -> Server | None:
            leading = [s for s in among or self.servers.values() if role(s) == "leader"]
            return leading[0] if len(leading) == 1 else None

        return wait_for(one, 20, "one server to lead")

    def cleanup(self) -> None:
        for server in self.servers.values():
            server.cleanup()
        self._agent.kill()
        self._agent.wait(5)
        kill_all_under(self.agent_dir)

    def started(self) -> collections.Counter[str]:
        return collections.Counter(self.marks.read_text().split())


def role(server: Server) -> str | None:
    try:
        return str(server.get("/servers")["role"])
    except (AssertionError, OSError):
        return None


@pytest.fixture
def two(tmp_path: Path, postgres_url: str) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path, postgres_url, 2)
    try:
        yield cluster
    finally:
        cluster.cleanup()


def at(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_leader_killed_in_a_burst_and_while_output_streams(two: Cluster) -> None:
    a, b = two.servers["a"], two.servers["b"]
    a.start()
    assert two.leader([a]) is a
    b.start()
    wait_for(lambda: role(b) == "standby", 20, "b to stand by")
    # 20 long runs streaming output, then 300 short ones due at once, a little later.
    long = [a.schedule("long") for _ in range(20)]
    for run_id in long:
        a.wait_state(run_id, "running", 20)
    due = time.time() + 6
    with (
        httpx.Client(base_url=a.url + "/api/v1", timeout=30) as client,
        ThreadPoolExecutor(16) as pool,
    ):
        body = {"job_id": "short", "time": at(due)}
        answers = list(pool.map(lambda _: client.post("/runs", json=body), range(300)))
    short = [answer.json()["run"]["run_id"] for answer in answers]
    assert time.time() < due - 0.5, "creating the burst took too long for this test"
    # Killed once the burst's first programs are started: looked for every
    # millisecond from just before it is due (300 starts can take under 100 ms).
    time.sleep(max(0.0, due - time.time() - 0.2))
    deadline = time.monotonic() + 20
    while sum(two.started().values()) < 50:
        assert time.monotonic() < deadline, "the burst did not begin"
        time.sleep(0.001)
    killed = time.monotonic()
    a.kill()
    in_flight = sum(two.started().values())
    assert in_flight < 320, "the burst was over before the leader was killed"
    wait_for(lambda: role(b) == "leader", 15, "b to lead")
    took = time.monotonic() - killed
    assert took <= 10.0, f"b took {took:.1f} s to lead"
    states = {}
    for run_id in long + short:
        states[run_id] = b.wait_finished(run_id, 60)["state"]
    assert set(states.values()) == {"success"}, collections.Counter(states.values())
    # No program started twice, none lost.
    started = two.started()
    assert set(started) == set(long + short), set(long + short) ^ set(started)
    assert max(started.values()) == 1, [r for r, n in started.items() if n > 1]
    # Every byte of every output, the long runs' across the takeover.
    for run_id in short:
        assert b.output(run_id) == f"short {run_id}\n".encode(), run_id
    for run_id in long:
        assert b.output(run_id) == long_output(run_id), run_id
    # The log of each run says which server did what: a long run was started by a
    # and finished under b.
    log = b.get(f"/runs/{long[0]}/log")["log"]
    assert {e["server"] for e in log} == {"a", "b"}, log
    assert log[0]["server"] == "a" and log[-1]["server"] == "b", log
    assert all(
        e["server"] in ("a", "b") for r in short[:20] for e in b.get(f"/runs/{r}/log")["log"]
    )


def test_three_servers_a_standby_takes_over_and_all_restart_at_once(
    tmp_path: Path, postgres_url: str
) -> None:
    cluster = Cluster(tmp_path, postgres_url, 3)
    servers = list(cluster.servers.values())
    try:
        for server in servers:
            server.start()
        leader = cluster.leader()
        runs = [leader.schedule("long") for _ in range(3)]
        runs += [leader.schedule("short") for _ in range(30)]
        leader.kill()
        rest = [s for s in servers if s is not leader]
        successor = cluster.leader(rest)
        assert [role(s) for s in rest].count("standby") == 1
        for run_id in runs:
            assert successor.wait_finished(run_id, 60)["state"] == "success", run_id
        assert max(cluster.started().values()) == 1
        # Every server down at once, then up at once: one leads, the others stand by,
        # and it runs what is asked of it.
        for server in servers:
            if server.proc is not None and server.proc.poll() is None:
                server.kill()
        for server in servers:
            server.spawn()
        for server in servers:
            server.wait_up()
        leader = cluster.leader()
        assert sorted(role(s) or "" for s in servers) == ["leader", "standby", "standby"]
        again = leader.schedule("short")
        assert leader.wait_finished(again, 30)["state"] == "success"
        assert cluster.started()[again] == 1
    finally:
        cluster.cleanup()
