"""Running the real server (and through it the real local agent) for tests.

Everything is real: `python -m apsis_server` in a subprocess bound to port 0 on
127.0.0.1 (it writes the port it got to a file), its SQLite file and state dir in
a temporary directory, the local agent it bootstraps over verified HTTPS. Tests
wait on conditions with `wait_for`, never on bare sleeps.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx

from apsis_agent import cgroups

T = TypeVar("T")
FINISHED = {"success", "failure", "error", "skipped"}


def wait_for(
    predicate: Callable[[], T | None], timeout: float = 10.0, what: str = "condition"
) -> T:
    """The first truthy value of `predicate()`, polled until `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def run_async(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine in a loop of its own, in a thread: the browser tests' driver may
    own this thread's loop for the whole session."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(make())).result()


def reserve_port() -> socket.socket:
    """A socket bound (not listening) to a new port of 127.0.0.1, with SO_REUSEADDR.

    While it is open no other process gets that port from a bind to port 0 or for a
    connection, yet a daemon that also sets SO_REUSEADDR (the server does) can bind
    and listen on it: the port is known before the daemon starts, with no race.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def read_port(path: Path) -> int | None:
    """The port a daemon wrote to `path` once listening; None until then."""
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None  # not yet written, or being written


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def group_alive(pgid: int) -> bool:
    """Whether any live (non-zombie) process is in process group `pgid`."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def kill_all_under(path: Path) -> list[int]:
    """SIGKILL every process whose command line names `path` (daemons, spawners and
    shims started for a test); the pids killed."""
    needle = str(path).encode()
    killed = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if needle in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry), signal.SIGKILL)
                killed.append(int(entry))
    return killed


def kill_cgroups(state_dir: Path) -> None:
    """SIGKILL whatever is left in the run cgroups of the agent of `state_dir` (so
    processes that left their group go too), and remove them."""
    for base in cgroups.agent_dirs(state_dir):
        for entry in os.scandir(base):
            if entry.is_dir() and entry.name.startswith(("proc-", "run-")):
                cgroup = cgroups.Cgroup(2 if "/unified/" in base else 1, {"x": entry.path})
                for _ in range(50):
                    pids = cgroups.processes(cgroup)
                    if not pids:
                        break
                    for pid in pids:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
                    time.sleep(0.02)
                with contextlib.suppress(OSError):
                    os.rmdir(entry.path)
        with contextlib.suppress(OSError):
            os.rmdir(base)


def kill_cgroups_under(root: Path) -> int:
    """`kill_cgroups` for every agent state dir under `root` (one holding an `epoch`
    file): the run cgroups of agents that were SIGKILLed (their daemons could not
    remove them) would otherwise outlive their state dirs. How many there were."""
    found = 0
    for directory, subdirs, files in os.walk(root):
        if "epoch" in files:
            found += 1
            kill_cgroups(Path(directory))
        subdirs[:] = [d for d in subdirs if d not in ("procs", "spare")]
    return found


class Server:
    """One real apsis-server process over a state dir, restartable."""

    def __init__(self, root: Path, jobs: dict[str, str] | None = None, config: str = "") -> None:
        self.root = root
        self.jobs_dir = root / "jobs"
        self.state = root / "state"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        for job_id, text in (jobs or {}).items():
            path = self.jobs_dir / f"{job_id}.yaml"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        self.config_file = root / "config.yaml"
        self.config_file.write_text(f"jobs: jobs\nstate: state\n{config}")
        self.port_file = root / "port"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_file = root / "server.log"
        self._port: int | None = None
        self._reserved: socket.socket | None = None

    @property
    def port(self) -> int:
        """The server's port: the one it got binding port 0 at its first start, bound
        again at every restart (agents were given URLs with it, as in a real restart).

        Asked before the first start (to write it into a config or an agent's state),
        a port is reserved (`reserve_port`) until the server listens on it.
        """
        if self._port is None:
            self._reserved = reserve_port()
            self._port = int(self._reserved.getsockname()[1])
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        """The server's command line: its port, or port 0 if it has none yet."""
        bind = f"127.0.0.1:{self._port or 0}"
        config = ["--config", str(self.config_file), "--port-file", str(self.port_file)]
        return [sys.executable, "-m", "apsis_server", *config, "--bind", bind]

    def start(self) -> Server:
        self.spawn()
        return self.wait_up()

    def spawn(self) -> None:
        """Start the process without waiting for it (`wait_up` waits)."""
        self.port_file.unlink(missing_ok=True)
        with open(self.log_file, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )

    def wait_up(self) -> Server:
        """Wait until the launched server listens and answers."""
        try:
            wait_for(self._listening, 20, "the server to listen")
        finally:
            self._release()
        wait_for(self._alive, 20, "the server to answer")
        return self

    def _listening(self) -> bool:
        """Whether the server wrote its port file (noting the port at the first start)."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"server exited {self.proc.returncode}:\n{self.log()}")
        port = read_port(self.port_file)
        if port is None:
            return False
        if self._port is None:
            self._port = port
        assert port == self._port, f"the server listens on {port}, not {self._port}"
        return True

    def _release(self) -> None:
        if self._reserved is not None:
            self._reserved.close()
            self._reserved = None

    def _alive(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"server exited {self.proc.returncode}:\n{self.log()}")
        try:
            return httpx.get(self.url + "/api/v1/alive", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")[-5000:]

    def kill(self) -> None:
        """SIGKILL the server, as a crash would."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    # -- the API ------------------------------------------------------------------

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(method, self.url + "/api/v1" + path, timeout=30, **kwargs)

    def get(self, path: str, **kwargs: Any) -> Any:
        response = self.api("GET", path, **kwargs)
        assert response.status_code == 200, response.text
        return response.json()

    def post(self, path: str, body: Any = None, status: int | None = None) -> Any:
        response = self.api("POST", path, json=body)
        if status is not None:
            assert response.status_code == status, response.text
        else:
            assert response.status_code < 300, response.text
        return response.json()

    def schedule(self, job_id: str, args: dict[str, str] | None = None) -> str:
        run_id: str = self.post("/runs", {"job_id": job_id, "args": args or {}})["run"]["run_id"]
        return run_id

    def run(self, run_id: str) -> dict[str, Any]:
        run: dict[str, Any] = self.get(f"/runs/{run_id}")["run"]
        return run

    def wait_state(
        self, run_id: str, states: set[str] | str, timeout: float = 15.0
    ) -> dict[str, Any]:
        wanted = {states} if isinstance(states, str) else states

        def check() -> dict[str, Any] | None:
            run = self.run(run_id)
            return run if run["state"] in wanted else None

        return wait_for(check, timeout, f"{run_id} to be {'/'.join(sorted(wanted))}")

    def wait_finished(self, run_id: str, timeout: float = 15.0) -> dict[str, Any]:
        return self.wait_state(run_id, FINISHED, timeout)

    def output(self, run_id: str) -> bytes:
        response = self.api("GET", f"/runs/{run_id}/output")
        assert response.status_code == 200, response.text
        return response.content

    def meta(self, run_id: str) -> dict[str, Any]:
        meta: dict[str, Any] = self.get(f"/runs/{run_id}/meta")["meta"]
        return meta

    # -- the local agent ----------------------------------------------------------

    @property
    def agent_dir(self) -> Path:
        return self.state / "local-agent"

    def agent_pid(self) -> int | None:
        try:
            return int((self.agent_dir / "daemon.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def cleanup(self) -> None:
        """Stop the server, the local agent and anything the tests left running."""
        self.stop()
        self._release()
        pid = self.agent_pid()
        if pid is not None and pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        procs = self.agent_dir / "procs"
        if procs.is_dir():
            for pid_file in procs.glob("*/pid"):
                with contextlib.suppress(OSError, ValueError, KeyError, ProcessLookupError):
                    info = json.loads(pid_file.read_text())
                    os.killpg(int(info["pgid"]), signal.SIGKILL)
                    os.kill(int(info["shim_pid"]), signal.SIGKILL)
        # An agent whose bootstrap was still under way when the server stopped.
        kill_all_under(self.root)
        # The SIGKILLed agent could not remove its run cgroups.
        kill_cgroups_under(self.root)


@contextlib.contextmanager
def running_server(
    root: Path, jobs: dict[str, str] | None = None, config: str = ""
) -> Iterator[Server]:
    server = Server(root, jobs, config)
    try:
        yield server.start()
    finally:
        server.cleanup()
