"""The real server and local agent under measurement, and what /proc says about them.

`LiveServer` extends the test harness's `Server` with a timed start, a wait for the
local agent, and a cleanup that also ends whatever is left in the agent's session.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx

from apsis_agent.provision import provision
from apsis_agent.state import StateDir
from apsis_common.states import State
from apsis_server.agents.events import PATH
from tests.harness import Server, kill_cgroups_under, read_port, wait_for
from tests.postgres import Cluster

# States a run passes through before its program runs.
NOT_STARTED = (State.NEW, State.SCHEDULED, State.WAITING, State.STARTING)


def rss_mb(pid: int) -> float | None:
    """Resident set size of `pid` in MB (VmRSS), None if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _pss_mb(pid: int) -> float:
    """Proportional set size of `pid` in MB: shared pages divided among their users."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _exe(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None


def agent_mb(pid: int) -> float | None:
    """Memory of agent daemon `pid` with its spawner and supervisors (shims), in MB.

    The processes of the daemon's session running the daemon's interpreter; the
    programs they run are not counted. Forked supervisors share most pages with
    the spawner, so summing their RSS would count those pages once per process:
    this sums PSS, which divides each shared page among its users. None if the
    daemon is gone.
    """
    sid, exe = session_of(pid), _exe(pid)
    if sid is None or exe is None:
        return None
    total = 0.0
    for entry in os.listdir("/proc"):
        if entry.isdigit() and session_of(int(entry)) == sid and _exe(int(entry)) == exe:
            total += _pss_mb(int(entry))
    return total


def fd_count(pid: int) -> int | None:
    """How many file descriptors `pid` has open, None if it is gone."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def session_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[3])
    except (OSError, ValueError, IndexError):
        return None


def kill_session(sid: int) -> None:
    """SIGKILL every process of session `sid` (one the benchmark's agent made)."""
    for entry in os.listdir("/proc"):
        if entry.isdigit() and session_of(int(entry)) == sid:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(entry), signal.SIGKILL)


class RssSampler:
    """Samples the RSS of some processes every `interval` seconds in a thread.

    Names in `agents` are agent daemons, sampled with their spawner and
    supervisors (`agent_mb`).
    """

    def __init__(
        self, pids: dict[str, int], interval: float = 0.05, agents: Sequence[str] = ()
    ) -> None:
        self.pids = pids
        self.interval = interval
        self.agents = set(agents)
        self.samples: dict[str, list[float]] = {name: [] for name in pids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            for name, pid in self.pids.items():
                value = agent_mb(pid) if name in self.agents else rss_mb(pid)
                if value is not None:
                    self.samples[name].append(value)
            self._stop.wait(self.interval)

    def peak(self, name: str) -> float | None:
        return max(self.samples[name], default=None)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class LiveServer(Server):
    """One real apsis-server over a temporary dir, with timings of its start."""

    def __init__(self, root: Path, jobs: dict[str, str] | None = None, config: str = "") -> None:
        super().__init__(root, jobs, config)
        self.started_at = 0.0
        self.store_url: str | None = None  # PostgreSQL's; None: SQLite in the state dir
        self._agent_sessions: set[int] = set()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def launch(self, timeout: float = 60.0) -> float:
        """Start the process; seconds from exec to the first answer of /api/v1/alive.

        As `Server.start`: port 0 at the first launch, read from the port file; the
        same port at a relaunch.
        """
        self.port_file.unlink(missing_ok=True)
        argv = self.argv()
        with open(self.log_file, "ab") as log:
            self.started_at = time.monotonic()
            self.proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        try:
            while not (self._listening() and self._alive()):
                if time.monotonic() - self.started_at > timeout:
                    raise RuntimeError(f"server did not answer within {timeout}s:\n{self.log()}")
                time.sleep(0.005)
        finally:
            self._release()
        return time.monotonic() - self.started_at

    def first_answer(self, path: str, timeout: float = 60.0) -> float:
        """Seconds from exec until `GET /api/v1{path}` first answers 200."""
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if self.api("GET", path).status_code == 200:
                    return time.monotonic() - self.started_at
            if time.monotonic() - self.started_at > timeout:
                raise RuntimeError(f"{path} did not answer within {timeout}s")
            time.sleep(0.005)

    def wait_agent(self, timeout: float = 60.0, agent_id: str | None = None) -> int:
        """Wait until the agent (default: the local one) is connected; the local
        agent's daemon pid."""
        local = "local" if self.store_url is None else f"local:{BENCH_SERVER}"
        agent_id = agent_id or local

        def connected() -> bool:
            agents = self.get("/agents")["agents"]
            return any(a["agent_id"] == agent_id and a["state"] == "connected" for a in agents)

        wait_for(connected, timeout, f"agent {agent_id} to connect")
        if agent_id != local:
            return 0
        pid = wait_for(self.agent_pid, timeout, "the agent's daemon.pid")
        sid = session_of(pid)
        if sid is not None:
            self._agent_sessions.add(sid)
        return pid

    def cleanup(self) -> None:
        super().cleanup()
        for sid in self._agent_sessions:
            kill_session(sid)


WORK = Path(os.environ.get("APSIS_BENCH_WORK") or Path(__file__).parent / "results" / "work")
# Scenarios' state dirs, removed when the benchmark ends rather than when their
# server stops. Removing a state dir frees tens of thousands of inodes at once; on
# ext4 without a journal (this machine's disk) the inode allocator then skips every
# inode freed in the last 60 s (360 s while its table block is dirty), reading each
# one's table block, so every file the next scenarios create costs more — in P1,
# 7.5 ms of CPU a run instead of 4.5 (server, agent and shims). No installation
# removes its whole state between two bursts; the agent's own removal of finished
# runs' directories is part of what is measured.
_SCRATCH: list[Path] = []


def scratch_dir(prefix: str) -> Path:
    """A fresh directory under WORK, removed when the benchmark ends (`discard`)."""
    WORK.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix=f"apsis-bench-{prefix}-", dir=WORK))
    _SCRATCH.append(root)
    return root


@atexit.register
def _remove_scratch() -> None:
    for root in _SCRATCH:
        shutil.rmtree(root, ignore_errors=True)


# The cluster each server gets a fresh PostgreSQL database of (bench/pg.py); None: SQLite.
postgres: Cluster | None = None
# The server's name there, which names its local agent `local:bench`.
BENCH_SERVER = "bench"


@contextlib.contextmanager
def live_server(
    name: str, jobs: dict[str, str] | None = None, config: str = ""
) -> Iterator[LiveServer]:
    """A `LiveServer` in a fresh temporary dir (not started); everything ends after."""
    # State lives beside the results, on the disk a real installation would use:
    # on some machines /tmp is many times slower at creating files.
    root = scratch_dir(name)
    url = postgres.database() if postgres is not None else None
    if url is not None:
        config += f"store: {{url: '{url}'}}\nserver: {{id: {BENCH_SERVER}}}\n"
    server = LiveServer(root, jobs, config)
    server.store_url = url
    try:
        yield server
    finally:
        server.cleanup()
        kill_cgroups_under(root)  # agents' run cgroups outlive their state dirs
        if postgres is not None and url is not None:
            postgres.drop(url)


def wait_drained(server: Server, timeout: float, query: str = "") -> None:
    """Wait until no run (matching `query`) is in a state before or during its program."""
    states = ",".join((*NOT_STARTED, "running", "stopping"))

    def drained() -> bool:
        runs = server.get(f"/runs?state={states}&limit=1{query}")["runs"]
        return not runs

    wait_for(drained, timeout, "every run to finish")


@contextlib.contextmanager
def static_agent(
    server: LiveServer, name: str, others: Sequence[LiveServer] = (), agents: str = ""
) -> Iterator[int]:
    """A separately started agent (`apsis-agent serve` on a provisioned state dir, on
    port 0), added to the server's config as static agent `name` with the port it
    got (call before the server starts); yields its pid, and kills it and its
    programs after. `others`: servers sharing the database, given the same entry
    and the server's CA; `agents`: more lines of the config's `agents:` mapping."""
    agent_dir, secret = server.root / f"{name}-agent", server.root / f"{name}.secret"
    provision(name, "127.0.0.1", server.state, server.url + PATH, agent_dir, secret)
    argv = [sys.executable, "-m", "apsis_agent", "serve", "--state-dir", str(agent_dir)]
    argv += ["--bind", "127.0.0.1", "--port", "0"]
    with open(server.root / f"{name}-agent.log", "ab") as log:
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:

        def daemon_pid() -> int | None:
            if proc.poll() is not None:
                raise RuntimeError(f"the static agent exited {proc.returncode}")
            with contextlib.suppress(OSError, ValueError, IndexError):
                return int((agent_dir / "daemon.pid").read_text().split()[0])
            return None

        pid = wait_for(daemon_pid, 30, "the static agent to listen")
        port_file = StateDir(agent_dir).port_file  # written before daemon.pid
        port = wait_for(lambda: read_port(port_file), 5, "the static agent's port")
        for each in (server, *others):
            if each is not server:
                shutil.copytree(server.state / "ca", each.state / "ca")
            with open(each.config_file, "a") as config:
                config.write(
                    f"agents:\n{agents}  static:\n    {name}:"
                    f" {{host: 127.0.0.1, port: {port}, secret_file: '{secret}'}}\n"
                )
        yield pid
    finally:
        kill_session(proc.pid)
        proc.wait(10)
