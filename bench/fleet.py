"""P9: a fleet of static agents on one server: what idle costs, and a burst over them.

Every agent is a real `apsis-agent serve` with a state dir of its own (made by
`apsis-agent provision`, issued by the server's CA) and a port of its own on
127.0.0.1, configured under `agents.static`; all are the members of one
`least-busy` host group, and the server's local agent is switched off. CPU comes
from /proc/PID/stat (utime + stime): the server's, and each agent's daemon with
the processes of its session (its spawner and idle supervisors; programs run in
sessions of their own and are not counted).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from apsis_agent.provision import provision
from apsis_agent.state import StateDir
from apsis_server.agents.events import PATH
from bench.live import (
    LiveServer,
    RssSampler,
    kill_session,
    live_server,
    rss_mb,
    wait_drained,
)
from bench.report import Figure, at_least, at_most
from bench.throughput import _response, burst_figures, fetch_runs, submit
from tests.harness import kill_all_under, read_port, wait_for

GROUP = "fleet"
TICK = os.sysconf("SC_CLK_TCK")
WAVE = 20  # agents started at once: 200 interpreters starting together thrash two CPUs


def cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system) `pid` has used, in seconds; None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICK  # fields 14 and 15 of stat(5)


def sessions_cpu() -> dict[int, float]:
    """CPU seconds used by the live processes of each session, in one pass over /proc."""
    out: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        sid = int(fields[3])
        out[sid] = out.get(sid, 0.0) + (int(fields[11]) + int(fields[12])) / TICK
    return out


@dataclass
class Agent:
    """One static agent: its name, state dir, secret file, port and daemon process."""

    name: str
    state: Path
    secret: Path
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0

    @property
    def agent_id(self) -> str:
        return f"static:{self.name}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


class Fleet:
    """`count` static agents of `server` (provisioned from its CA; call before it starts)."""

    def __init__(self, server: LiveServer, count: int) -> None:
        self.server = server
        self.agents = [
            Agent(f"a{i}", server.root / "fleet" / f"a{i}", server.root / "fleet" / f"a{i}.secret")
            for i in range(count)
        ]
        self.server_up = 0.0  # seconds from the server's exec to its first answer

    def start(self) -> None:
        """Provision and start every agent (in waves), then write the server's config:
        each agent under `agents.static`, all in host group `fleet` (least-busy)."""
        (self.server.root / "fleet").mkdir(exist_ok=True)
        webhook = self.server.url + PATH
        for a in self.agents:
            provision(a.name, "127.0.0.1", self.server.state, webhook, a.state, a.secret)
        for i in range(0, len(self.agents), WAVE):
            wave = self.agents[i : i + WAVE]
            for a in wave:
                self.launch(a, 0)
            for a in wave:
                a.port = self._port(a)
        static = "".join(
            f"    {a.name}: {{host: 127.0.0.1, port: {a.port}, secret_file: '{a.secret}'}}\n"
            for a in self.agents
        )
        members = ", ".join(a.name for a in self.agents)
        with open(self.server.config_file, "a") as config:
            config.write(
                f"agents:\n  local: {{enabled: false}}\n  static:\n{static}"
                f"host_groups:\n  {GROUP}: {{type: least-busy, hosts: [{members}]}}\n"
            )

    def launch(self, agent: Agent, port: int) -> None:
        """Start `apsis-agent serve` for `agent` on `port` (0: any) in a session of its own."""
        argv = [sys.executable, "-m", "apsis_agent", "serve", "--state-dir", str(agent.state)]
        argv += ["--bind", "127.0.0.1", "--port", str(port)]
        with open(agent.state.parent / f"{agent.name}.log", "ab") as log:
            agent.proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def _port(self, agent: Agent) -> int:
        port_file = StateDir(agent.state).port_file

        def listening() -> int | None:
            assert agent.proc is not None
            if agent.proc.poll() is not None:
                raise RuntimeError(f"agent {agent.name} exited {agent.proc.returncode}")
            return read_port(port_file)

        return wait_for(listening, 60, f"agent {agent.name} to listen")

    def kill_daemon(self, agent: Agent) -> None:
        """SIGKILL the agent's daemon alone (its spawner, supervisors and programs stay)."""
        assert agent.proc is not None
        agent.proc.send_signal(signal.SIGKILL)
        agent.proc.wait(10)

    def restart(self, agent: Agent) -> None:
        """Start the agent's daemon again on its port; wait until it listens."""
        StateDir(agent.state).port_file.unlink(missing_ok=True)
        self.launch(agent, agent.port)
        self._port(agent)

    def connected(self) -> int:
        """How many of the fleet's agents the server shows `connected`."""
        ids = {a.agent_id for a in self.agents}
        agents = self.server.get("/agents")["agents"]
        return sum(a["agent_id"] in ids and a["state"] == "connected" for a in agents)

    def wait_connected(self, timeout: float) -> float:
        """Seconds until every agent is connected in the server's /agents."""
        started = time.monotonic()
        wait_for(lambda: self.connected() == len(self.agents), timeout, "every agent to connect")
        return time.monotonic() - started

    def cpu(self) -> dict[str, float]:
        """CPU seconds used so far by each live agent's session (daemon, spawner, shims)."""
        sessions = sessions_cpu()
        return {
            a.name: sessions[a.pid]
            for a in self.agents
            if a.proc is not None and a.proc.poll() is None and a.pid in sessions
        }

    def cleanup(self) -> None:
        """SIGKILL every agent's session and every program any of them started."""
        for a in self.agents:
            if a.proc is not None:
                kill_session(a.pid)
            for pid_file in (a.state / "procs").glob("*/pid"):
                with contextlib.suppress(OSError, ValueError, KeyError, ProcessLookupError):
                    info = json.loads(pid_file.read_text())
                    os.killpg(int(info["pgid"]), signal.SIGKILL)
                    os.kill(int(info["shim_pid"]), signal.SIGKILL)
        kill_all_under(self.server.root)
        for a in self.agents:
            if a.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    a.proc.wait(5)


@contextlib.contextmanager
def fleet_server(
    name: str, count: int, jobs: Callable[[Path], dict[str, str]]
) -> Iterator[tuple[LiveServer, Fleet]]:
    """A server (launched) with `count` static agents (not yet waited for) and the jobs
    `jobs(root)` gives for its temporary dir; everything ends after."""
    with live_server(name) as server:
        for job_id, text in jobs(server.root).items():
            (server.jobs_dir / f"{job_id}.yaml").write_text(text)
        fleet = Fleet(server, count)
        try:
            fleet.start()
            fleet.server_up = server.launch(120)
            yield server, fleet
        finally:
            fleet.cleanup()


async def get_many(url: str, paths: Sequence[str], clients: int = 8) -> dict[str, Any]:
    """`GET` each of `paths` (under /api/v1) over `clients` keep-alive connections; the
    JSON answers by path."""
    target = urlsplit(url)
    todo = list(reversed(paths))
    out: dict[str, Any] = {}

    async def client() -> None:
        reader, writer = await asyncio.open_connection(target.hostname, target.port)
        try:
            while todo:
                path = todo.pop()
                request = f"GET /api/v1{path} HTTP/1.1\r\nHost: {target.netloc}\r\n\r\n"
                writer.write(request.encode())
                status, body = await _response(reader)
                if status != 200:
                    raise RuntimeError(f"GET {path} answered {status}: {body[:300]!r}")
                out[path] = json.loads(body)
        finally:
            writer.close()

    async with asyncio.TaskGroup() as tasks:
        for _ in range(min(clients, len(paths))):
            tasks.create_task(client())
    return out


def agents_of(server: LiveServer, run_ids: Sequence[str]) -> Counter[str]:
    """How many of these runs each agent ran (the `agent_id` of each run's metadata)."""
    paths = [f"/runs/{r}/meta" for r in run_ids]
    metas = asyncio.run(get_many(server.url, paths))
    return Counter(str(m["meta"].get("agent_id")) for m in metas.values())


@dataclass(frozen=True)
class Size:
    agents: int
    idle: float  # seconds of the idle window
    runs: int  # of the burst


def size(quick: bool) -> Size:
    return Size(20, 10.0, 200) if quick else Size(200, 60.0, 2000)


def _idle(server: LiveServer, fleet: Fleet, seconds: float) -> list[Figure]:
    """CPU of the server and of every agent over `seconds` with nothing to do."""
    time.sleep(5.0)  # the connections' first exchanges are not idling
    n = len(fleet.agents)
    agents0, server0 = fleet.cpu(), cpu_seconds(server.pid)
    started = time.monotonic()
    time.sleep(seconds)
    span = time.monotonic() - started
    server1, agents1 = cpu_seconds(server.pid), fleet.cpu()
    connected = fleet.connected()
    per_minute = [(agents1[k] - agents0[k]) * 60 / span for k in agents0.keys() & agents1.keys()]
    server_cpu = None if server0 is None or server1 is None else server1 - server0
    window = f"{span:.0f} s window, {n} agents connected"
    return [
        Figure("P9", "agents connected after the idle window", connected, f"of {n}", at_least(n)),
        Figure("P9", "agents measured", len(per_minute), f"of {n}", at_least(n)),
        Figure(
            "P9",
            "idle server CPU",
            None if server_cpu is None else server_cpu / span * 100,
            "% of a core",
            at_most(5),
            window,
        ),
        Figure(
            "P9",
            "idle server CPU-s a minute",
            None if server_cpu is None else server_cpu * 60 / span,
            "CPU-s",
        ),
        Figure("P9", "idle server RSS", rss_mb(server.pid), "MB", at_most(300)),
        Figure(
            "P9",
            "idle agent CPU-s a minute, median",
            statistics.median(per_minute) if per_minute else None,
            "CPU-s",
            at_most(0.03),
            "daemon + spawner + shims",
        ),
        Figure(
            "P9",
            "idle agent CPU-s a minute, max",
            max(per_minute, default=None),
            "CPU-s",
            at_most(0.03),
        ),
    ]


def _burst(server: LiveServer, fleet: Fleet, runs: int) -> list[Figure]:
    """A P1-style burst of `runs` over the group: throughput, latency, agents used."""
    n = len(fleet.agents)
    server.post("/runs?wait=10", {"job_id": "true"})  # warm-up: the first request's paths
    with RssSampler({"server": server.pid}, 0.5) as rss:
        submitted = asyncio.run(submit(server.url, runs, 8))
        wait_drained(server, 60 + runs / 10, "&job_id=true")
    found = fetch_runs(server, {s.run_id for s in submitted}, "job_id=true")
    figures = burst_figures("P9", submitted, found)
    used = agents_of(server, [s.run_id for s in submitted])
    fleet_ids = {a.agent_id for a in fleet.agents}
    spread = sorted(used[a] for a in fleet_ids)
    note = (
        f"runs per agent: min {spread[0]}, median {statistics.median(spread):g}, max {spread[-1]}"
    )
    figures[0] = replace(figures[0], target=at_least(400))
    return [
        *figures,
        Figure(
            "P9", "agents that got a run", sum(v > 0 for v in spread), f"of {n}", at_least(n), note
        ),
        Figure("P9", "server RSS peak in the burst", rss.peak("server"), "MB", at_most(300)),
    ]


JOBS = {"true": f"program: {{type: program, argv: [/bin/true], host: {GROUP}}}\n"}


def p9(quick: bool) -> list[Figure]:
    """P9: N agents connected and idle (server and agents' CPU, server RSS), then a
    burst of runs spread over them."""
    s = size(quick)
    started = time.monotonic()
    with fleet_server("p9", s.agents, lambda _: JOBS) as (server, fleet):
        launched = time.monotonic() - started
        connect = fleet.wait_connected(120 + s.agents)
        figures = [
            Figure("P9", "agents", s.agents, "", note="static agents, one host group (least-busy)"),
            Figure("P9", "provision + start every agent and the server", launched, "s"),
            Figure("P9", "server exec → /alive answers", fleet.server_up, "s"),
            Figure("P9", "server up → every agent connected", connect, "s"),
            *_idle(server, fleet, s.idle),
            *_burst(server, fleet, s.runs),
        ]
    return figures
