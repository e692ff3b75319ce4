"""A seeded fault campaign (spec/05-quality.md, scenario 8) against real daemons.

A mixed workload (short runs, runs with a dependency, long runs streaming lines,
runs writing a lot at once, stops) goes to the server while faults are injected one
after another at random: SIGKILL of the server (or, with two servers on
PostgreSQL, of the leader) and of agents, SIGSTOP of an agent for longer than its
heartbeat then SIGCONT, a partition of agent from server (a pausable proxy in
front of the server's webhook), and a full disk (a filler file on a small tmpfs)
under the server's or the agent's state dir. Then the faults stop, everything is
healed, the runs settle, the daemons are stopped, and the invariants are checked
from the store (the database), the agents' files and the marker file every
program appends its run id to:

- every run is finished (success, failure, error or skipped) with a reason;
- no program started twice (one line per run id in the marker file);
- the stored output is what the program wrote, byte for byte: all of it for a run
  that succeeded, a prefix of it otherwise (the programs `set -e`, so a write
  refused to them by a full disk fails them);
- each agent's event sequence is contiguous: no gap, no sequence restarted, and the
  agent's last event number is the server's ack, with nothing left unacknowledged;
- no process is left behind.

`random.Random(seed)` draws every choice — the workload's and the faults' — from
two streams of the seed (timing still varies from run to run). The seed is
printed, and `APSIS_CHAOS_SEED` sets it, so a failure can be replayed; a failure
prints the campaign's history (every request and fault, timed).
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from apsis_agent.provision import provision
from apsis_agent.state import StateDir
from apsis_server.agents.events import PATH
from apsis_server.store.base import OutputName, RunFilter, RunStore
from tests.harness import (
    FINISHED,
    Server,
    group_alive,
    kill_all_under,
    kill_cgroups,
    read_port,
    wait_for,
)
from tests.proxy import Proxy
from tests.sshd import agent_command

SEED_VARIABLE = "APSIS_CHAOS_SEED"
HEARTBEAT = 0.5
LOST_TIMEOUT = 8.0

# Each program appends its run id to MARKS first, then writes what `expected` says.
JOBS = {
    "short": (
        "params: [tag]\n"
        "program: 'set -e; echo {{ run_id }} >> MARKS; echo \"short {{ run_id }} {{ tag }}\"'\n"
    ),
    "after": (
        "params: [tag]\n"
        "condition: {type: dependency, job_id: short, max_wait: 20s}\n"
        "program: 'set -e; echo {{ run_id }} >> MARKS; echo \"after {{ run_id }} {{ tag }}\"'\n"
    ),
    "long": (
        "params: [n]\n"
        "program: 'set -e; echo {{ run_id }} >> MARKS; for i in $(seq 1 {{ n }}); do "
        'echo "{{ run_id }} line $i"; sleep 0.2; done\'\n'
    ),
    "big": (
        "params: [n]\n"
        "program: 'set -e; echo {{ run_id }} >> MARKS; "
        'seq -f "{{ run_id }} %08g ........................................" 1 {{ n }}\'\n'
    ),
}
FAULTS_SQLITE = (
    "kill_server",
    "kill_agent",
    "stop_agent",
    "partition",
    "server_disk_full",
    "agent_disk_full",
    "wipe_agent",
)
FAULTS_POSTGRES = ("kill_leader", "kill_agent", "stop_agent", "agent_disk_full")


def expected(job_id: str, args: dict[str, str], run_id: str) -> bytes:
    """Everything the program of a run writes when nothing stops it."""
    if job_id in ("short", "after"):
        return f"{job_id} {run_id} {args['tag']}\n".encode()
    n = int(args["n"])
    if job_id == "long":
        return b"".join(f"{run_id} line {i}\n".encode() for i in range(1, n + 1))
    dots = "." * 40
    return b"".join(f"{run_id} {i:08d} {dots}\n".encode() for i in range(1, n + 1))


def seed_from_env() -> int:
    """The seed from APSIS_CHAOS_SEED, or a new one."""
    text = os.environ.get(SEED_VARIABLE)
    return int(text) if text else random.SystemRandom().randrange(1, 2**31)


# -- mounts and full disks -----------------------------------------------------------


def mount(*argv: str) -> None:
    subprocess.run(["mount", *argv], check=True, capture_output=True)


def keep(points: list[Path], into: Path) -> None:
    """Copy what the mounts hold (databases, logs; not process dirs) to `into`, to
    read after a failure."""
    for point in points:
        for path in point.rglob("*"):
            if path.is_file() and "procs" not in path.parts and path.name != "filler":
                target = into / point.name / path.relative_to(point)
                target.parent.mkdir(parents=True, exist_ok=True)
                with contextlib.suppress(OSError):
                    shutil.copy2(path, target)


def unmount_all(points: list[Path]) -> None:
    """Unmount what was mounted, innermost first (lazily if still busy)."""
    for point in reversed(points):
        done = subprocess.run(["umount", str(point)], check=False, capture_output=True)
        if done.returncode != 0:
            subprocess.run(["umount", "-l", str(point)], check=False, capture_output=True)


def fill(directory: Path) -> Path:
    """Take every free byte of the filesystem of `directory`; the filler file."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (1 << 20, 65536, 4096, 512, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)
    return filler


# -- the history -------------------------------------------------------------------


@dataclass
class History:
    """What the campaign did, timed, for the report of a failure."""

    start: float = field(default_factory=time.monotonic)
    lines: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def note(self, text: str) -> None:
        with self.lock:
            self.lines.append(f"{time.monotonic() - self.start:8.2f}s {text}")

    def text(self) -> str:
        with self.lock:
            return "\n".join(self.lines)


# -- the worlds ----------------------------------------------------------------------


class World:
    """Daemons to break: one or more servers and an agent."""

    agent_id: str
    agent_dir: Path
    wipes = 0  # how many times the agent's state was wiped (`wipe_agent`)
    servers: list[Server]
    marks: Path

    def leader(self) -> Server | None:
        """The server that takes requests now, if one does."""
        for server in self.servers:
            if server.proc is not None and server.proc.poll() is None:
                with contextlib.suppress(httpx.HTTPError):
                    answer = httpx.get(server.url + "/api/v1/servers", timeout=2)
                    if answer.status_code == 200 and answer.json().get("role") == "leader":
                        return server
        return None

    def agent_pid(self) -> int | None:
        try:
            return int((self.agent_dir / "daemon.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def inject(self, fault: str, rng: random.Random, history: History) -> None:
        """Inject `fault`, hold it a while (drawn from `rng`), and heal it."""
        getattr(self, fault)(rng, history)

    def _kill_daemon(self, history: History, what: str) -> bool:
        """SIGKILL the agent's daemon, noting `what` (with its `{pid}`); False if
        none runs."""
        pid = self.agent_pid()
        if pid is None:
            return False
        history.note(what.format(pid=pid))
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        return True

    def kill_agent(self, rng: random.Random, history: History) -> None:
        if self._kill_daemon(history, "SIGKILL agent pid {pid}"):
            self.agent_killed(rng, history)

    def agent_killed(self, rng: random.Random, history: History) -> None:
        """What follows an agent's death (the server bootstraps a local one again)."""

    def wipe_agent(self, rng: random.Random, history: History) -> None:
        """The agent's host reinstalled: the daemon and its programs killed, its
        state dir emptied (the server bootstraps a new agent, in a new sequence)."""
        if not self._kill_daemon(history, "agent state wiped (pid {pid} and its programs killed)"):
            return
        kill_all_under(self.agent_dir)
        kill_cgroups(self.agent_dir)
        for entry in self.agent_dir.iterdir():  # the mount point itself stays
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        self.wipes += 1
        self.agent_killed(rng, history)

    def stop_agent(self, rng: random.Random, history: History) -> None:
        pid = self.agent_pid()
        if pid is None:
            return
        hold = rng.uniform(3 * HEARTBEAT, LOST_TIMEOUT * 0.6)
        history.note(f"SIGSTOP agent pid {pid} for {hold:.1f}s")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(hold)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        history.note(f"SIGCONT agent pid {pid}")

    def agent_disk_full(self, rng: random.Random, history: History) -> None:
        self._disk_full(self.agent_dir, "agent", rng, history)

    def _disk_full(self, where: Path, what: str, rng: random.Random, history: History) -> None:
        hold = rng.uniform(1.0, 6.0)
        filler = fill(where)
        history.note(f"{what} state dir full for {hold:.1f}s")
        try:
            time.sleep(hold)
        finally:
            filler.unlink()
        history.note(f"{what} state dir has space again")

    def heal(self) -> None:
        """Undo whatever fault may still hold (after a failure in the middle of one)."""
        pid = self.agent_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        for directory in (self.agent_dir, *(s.state for s in self.servers)):
            (directory / "filler").unlink(missing_ok=True)

    def open_store(self) -> RunStore:
        raise NotImplementedError

    def logs(self) -> str:
        return "".join(s.log_file.read_text(errors="replace") for s in self.servers)

    def stop(self) -> None:
        """Stop every daemon gracefully (the store is read afterwards)."""
        for server in self.servers:
            server.stop()

    def cleanup(self) -> None:
        raise NotImplementedError


class SqliteWorld(World):
    """One server on SQLite, its local agent, a proxy between them; the server's
    state dir a tmpfs, the agent's another."""

    agent_id = "local"

    def __init__(self, root: Path, mounts: list[Path]) -> None:
        self.marks = root / "marks"
        self.marks.touch()
        jobs = {k: v.replace("MARKS", str(self.marks)) for k, v in JOBS.items()}
        self.server = Server(root / "server", jobs)
        self.servers = [self.server]
        self.proxy = Proxy(self.server.port)
        self.server.config_file.write_text(
            f"jobs: jobs\nstate: state\npublic_url: http://127.0.0.1:{self.proxy.port}\n"
            f"agents: {{heartbeat: {HEARTBEAT}s, lost_timeout: {LOST_TIMEOUT}s}}\n"
        )
        self.server.state.mkdir()
        mount("-t", "tmpfs", "-o", "size=64m", "tmpfs", str(self.server.state))
        mounts.append(self.server.state)
        self.agent_dir = self.server.agent_dir
        self.agent_dir.mkdir()
        mount("-t", "tmpfs", "-o", "size=16m", "tmpfs", str(self.agent_dir))
        mounts.append(self.agent_dir)
        self.server.start()

    def leader(self) -> Server | None:
        """The one server, while it runs (no need to ask it)."""
        proc = self.server.proc
        return self.server if proc is not None and proc.poll() is None else None

    def kill_server(self, rng: random.Random, history: History) -> None:
        down = rng.uniform(0.2, 3.0)
        history.note(f"SIGKILL server, down {down:.1f}s")
        self.server.kill()
        time.sleep(down)
        self.server.start()
        history.note("server up again")

    def partition(self, rng: random.Random, history: History) -> None:
        hold = rng.uniform(1.0, LOST_TIMEOUT * 0.8)
        history.note(f"partition agent -> server for {hold:.1f}s")
        self.proxy.cut()
        try:
            time.sleep(hold)
        finally:
            self.proxy.heal()
        history.note("partition healed")

    def server_disk_full(self, rng: random.Random, history: History) -> None:
        self._disk_full(self.server.state, "server", rng, history)

    def heal(self) -> None:
        self.proxy.heal()
        super().heal()
        if self.server.proc is None or self.server.proc.poll() is not None:
            self.server.start()

    def open_store(self) -> RunStore:
        from apsis_server.store.sqlite import SqliteStore

        return SqliteStore(self.server.state / "apsis.db")

    def cleanup(self) -> None:
        self.server.cleanup()
        self.proxy.close()


class PostgresWorld(World):
    """Two servers on one PostgreSQL database and a static agent (`apsis-agent
    serve`, started again by the campaign when killed, as systemd would), whose
    state dir is a tmpfs."""

    agent_id = "static:svc"

    def __init__(self, root: Path, url: str, mounts: list[Path]) -> None:
        self.url = url
        self.marks = root / "marks"
        self.marks.touch()
        jobs = {
            k: v.replace("program: '", "program: {type: shell, host: svc, command: '")
            .replace("'\n", "'}\n")
            .replace("MARKS", str(self.marks))
            for k, v in JOBS.items()
        }
        self.servers = [Server(root / name, jobs) for name in "ab"]
        first = self.servers[0]
        self.agent_dir = root / "svc-agent"
        self.agent_dir.mkdir()
        mount("-t", "tmpfs", "-o", "size=16m", "tmpfs", str(self.agent_dir))
        mounts.append(self.agent_dir)
        secret = root / "svc.secret"
        provision("svc", "127.0.0.1", first.state, first.url + PATH, self.agent_dir, secret)
        self._agent_log = root / "svc.log"
        self._port = 0
        self._agent = self._serve()
        port = self._port = wait_for(self._agent_port, 20, "the static agent to listen")
        for index, server in enumerate(self.servers):
            if index:  # every server holds the same CA (docs/operations.md)
                shutil.copytree(first.state / "ca", server.state / "ca")
            with server.config_file.open("a") as config:
                config.write(
                    f"store: {{url: '{url}'}}\nserver: {{id: {'ab'[index]}}}\n"
                    f"agents:\n  local: {{enabled: false}}\n  heartbeat: {HEARTBEAT}s\n"
                    f"  lost_timeout: {LOST_TIMEOUT}s\n  static:\n"
                    f"    svc: {{host: 127.0.0.1, port: {port}, secret_file: '{secret}'}}\n"
                )
        for server in self.servers:
            server.start()
        wait_for(self.leader, 30, "a leader")

    def _serve(self) -> subprocess.Popen[bytes]:
        argv = [*agent_command(), "serve", "--state-dir", str(self.agent_dir)]
        # Served again on the port the servers know, as under systemd.
        argv += ["--bind", "127.0.0.1", "--port", str(self._port)]
        argv += ["--heartbeat", str(HEARTBEAT)]
        with self._agent_log.open("ab") as log:
            return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)

    def _agent_port(self) -> int | None:
        if self._agent.poll() is not None:
            raise AssertionError(f"the static agent exited {self._agent.returncode}")
        return read_port(StateDir(self.agent_dir).port_file)

    def agent_killed(self, rng: random.Random, history: History) -> None:
        self._agent.wait(10)
        down = rng.uniform(0.2, 3.0)
        time.sleep(down)
        StateDir(self.agent_dir).port_file.unlink(missing_ok=True)
        self._agent = self._serve()
        history.note(f"agent served again after {down:.1f}s")

    def kill_leader(self, rng: random.Random, history: History) -> None:
        leader = self.leader()
        if leader is None:
            return
        down = rng.uniform(0.5, 5.0)
        history.note(f"SIGKILL leader {leader.root.name}, down {down:.1f}s")
        leader.kill()
        time.sleep(down)
        leader.start()
        history.note(f"{leader.root.name} up again")

    def heal(self) -> None:
        super().heal()
        if self._agent.poll() is not None:
            StateDir(self.agent_dir).port_file.unlink(missing_ok=True)
            self._agent = self._serve()
        for server in self.servers:
            if server.proc is None or server.proc.poll() is not None:
                server.start()
        wait_for(self.leader, 30, "a leader")

    def open_store(self) -> RunStore:
        from apsis_server.store.postgres import PostgresStore

        return PostgresStore(self.url)

    def stop(self) -> None:
        super().stop()
        self._agent.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._agent.wait(15)

    def logs(self) -> str:
        return super().logs() + self._agent_log.read_text(errors="replace")

    def cleanup(self) -> None:
        for server in self.servers:
            server.cleanup()
        if self._agent.poll() is None:
            self._agent.kill()
            self._agent.wait(5)
        kill_all_under(self.agent_dir)


# -- the workload ------------------------------------------------------------------


class Workload:
    """Asks the leader for runs (and stops) at random until told to stop."""

    def __init__(self, world: World, rng: random.Random, history: History) -> None:
        self.world = world
        self.rng = rng
        self.history = history
        self.asked: dict[str, tuple[str, dict[str, str]]] = {}
        self.refused = 0
        self.stopped: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Workload:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)

    def _loop(self) -> None:
        tag = 0
        while not self._stop.wait(self.rng.uniform(0.05, 0.4)):
            kind = self.rng.choices(["short", "long", "big", "stop"], [5, 3, 1, 1])[0]
            if kind == "stop":
                longs = [r for r, (j, _) in self.asked.items() if j == "long"]
                if longs:
                    self._stop_run(self.rng.choice(longs[-10:]))
                continue
            if kind == "short":
                tag += 1
                self._ask("short", {"tag": str(tag)})
                self._ask("after", {"tag": str(tag)})
            elif kind == "long":
                self._ask("long", {"n": str(self.rng.randint(3, 40))})
            else:
                self._ask("big", {"n": str(self.rng.randint(1000, 30000))})

    def _ask(self, job_id: str, args: dict[str, str]) -> None:
        server = self.world.leader()
        if server is None:
            self.refused += 1
            return
        try:
            answer = server.api("POST", "/runs", json={"job_id": job_id, "args": args})
        except httpx.HTTPError:
            self.refused += 1
            return
        if answer.status_code < 300:
            run_id = answer.json()["run"]["run_id"]
            self.asked[run_id] = (job_id, args)
        else:
            self.refused += 1

    def _stop_run(self, run_id: str) -> None:
        server = self.world.leader()
        if server is None:
            return
        with contextlib.suppress(httpx.HTTPError):
            answer = server.api("POST", f"/runs/{run_id}/stop")
            if answer.status_code < 300:
                self.stopped.add(run_id)
                self.history.note(f"stop {run_id}")


# -- the campaign ------------------------------------------------------------------


@dataclass
class Report:
    """What a campaign did and found."""

    seed: int
    mode: str
    seconds: float
    faults: collections.Counter[str]
    runs: collections.Counter[str]
    asked: int
    refused: int
    stops: int
    reasons: collections.Counter[str]
    problems: list[str]
    history: str

    def summary(self) -> str:
        faults = ", ".join(f"{k} {v}" for k, v in sorted(self.faults.items()))
        runs = ", ".join(f"{k} {v}" for k, v in sorted(self.runs.items()))
        return (
            f"chaos seed {self.seed} ({self.mode}, {self.seconds:.0f}s): faults: {faults}; "
            f"runs: {runs}; asked {self.asked}, refused {self.refused}, stops {self.stops}; "
            f"{len(self.problems)} problems; why runs failed: {dict(self.reasons)}"
        )


@contextlib.contextmanager
def sqlite_world(root: Path) -> Iterator[World]:
    mounts: list[Path] = []
    world: SqliteWorld | None = None
    try:
        world = SqliteWorld(root, mounts)
        yield world
    finally:
        if world is not None:
            world.cleanup()
        else:
            kill_all_under(root)
        keep(mounts, root / "kept")
        unmount_all(mounts)


@contextlib.contextmanager
def postgres_world(root: Path, url: str) -> Iterator[World]:
    mounts: list[Path] = []
    world: PostgresWorld | None = None
    try:
        world = PostgresWorld(root, url, mounts)
        yield world
    finally:
        if world is not None:
            world.cleanup()
        else:
            kill_all_under(root)
        keep(mounts, root / "kept")
        unmount_all(mounts)


def run_campaign(
    world: World,
    seed: int,
    seconds: float,
    faults: tuple[str, ...],
    gap: tuple[float, float] = (1.0, 4.0),
    settle: float = 90.0,
) -> Report:
    """Faults for `seconds`, then settle and check; the report (problems empty if
    every invariant holds)."""
    mode = "postgres" if isinstance(world, PostgresWorld) else "sqlite"
    print(f"chaos: seed {seed} ({mode}; replay with {SEED_VARIABLE}={seed})", flush=True)
    history = History()
    history.note(f"seed {seed}, {mode}, {seconds:.0f}s, faults {', '.join(faults)}")
    fault_rng = random.Random(f"{seed}/faults")
    injected: collections.Counter[str] = collections.Counter()
    end = time.monotonic() + seconds
    # In rounds, each a shuffle of every kind: even a short campaign tries them all.
    rounds: list[str] = []
    with Workload(world, random.Random(f"{seed}/workload"), history) as workload:
        try:
            while time.monotonic() < end:
                time.sleep(fault_rng.uniform(*gap))
                if not rounds:
                    rounds = fault_rng.sample(faults, len(faults))
                fault = rounds.pop()
                injected[fault] += 1
                world.inject(fault, fault_rng, history)
        finally:
            world.heal()
    history.note(f"faults over; {len(workload.asked)} runs asked, settling")
    problems = settle_runs(world, settle)
    world.stop()
    history.note("daemons stopped; checking")
    runs: collections.Counter[str] = collections.Counter()
    reasons: collections.Counter[str] = collections.Counter()
    problems += check(world, workload.asked, workload.stopped, runs, reasons)
    return Report(
        seed,
        mode,
        seconds,
        injected,
        runs,
        len(workload.asked),
        workload.refused,
        len(workload.stopped),
        reasons,
        problems,
        history.text(),
    )


def settle_runs(world: World, timeout: float) -> list[str]:
    """Wait until no run is unfinished (as the leader says) and the agent has no
    process left; what did not settle."""

    def unfinished() -> dict[str, int] | None:
        server = world.leader()
        if server is None:
            return None
        try:
            counts: dict[str, int] = server.get("/stats")["runs"]
        except (AssertionError, httpx.HTTPError):
            return None
        return counts

    def settled() -> bool:
        counts = unfinished()
        procs = world.agent_dir / "procs"
        left = list(procs.iterdir()) if procs.is_dir() else []
        return counts is not None and sum(counts.values()) == 0 and not left

    try:
        wait_for(settled, timeout, "every run to finish and every process dir to go")
    except AssertionError as exc:
        return [f"{exc}: unfinished {unfinished()}"]
    return []


def check(
    world: World,
    asked: dict[str, tuple[str, dict[str, str]]],
    stopped: set[str],
    runs: collections.Counter[str],
    reasons: collections.Counter[str],
) -> list[str]:
    """Every invariant, from the store, the agent's files and the marker file."""
    problems: list[str] = []
    marks = collections.Counter(world.marks.read_text().split())
    twice = sorted(r for r, n in marks.items() if n > 1)
    if twice:
        problems.append(f"started more than once: {twice}")
    store = world.open_store()
    try:
        stored = store.query(RunFilter(limit=10**9))
        for run in stored:
            runs[run.state.value] += 1
            if run.state.value in ("error", "failure"):
                reasons[f"{run.state.value}: {_reason(run.message)}"] += 1
            entries = store.log(run.run_id)
            # A stop answered 503 (a full disk) is kept too: the log tells.
            asked_to_stop = any(e.message == "stop requested" for e in entries)
            found = _check_run(store, run, marks, run.run_id in stopped or asked_to_stop)
            if found:
                log = "; ".join(f"{e.state or ''} {e.message}" for e in entries)
                found.append(f"  {run.run_id} log: {log[:1500]}")
            problems += found
        missing = sorted(set(asked) - {r.run_id for r in stored})
        if missing:
            problems.append(f"runs answered 200 but not in the store: {missing}")
        marked_unknown = sorted(set(marks) - {r.run_id for r in stored})
        if marked_unknown:
            problems.append(f"programs started for runs not in the store: {marked_unknown}")
        problems += _check_sequence(world, store.ack(world.agent_id))
    finally:
        store.close()
    problems += _check_logs(world.logs(), world.wipes)
    problems += _check_processes(world.agent_dir)
    return problems


def _check_run(
    store: RunStore, run: Any, marks: collections.Counter[str], stopped: bool
) -> list[str]:
    """A run's state, reason, starts and output; a run stopped on request may
    succeed with part of its output."""
    state = run.state.value
    if state not in FINISHED:
        return [f"{run.run_id} ({run.job_id}) not finished: {state}"]
    problems = []
    if not run.message:
        problems.append(f"{run.run_id} ({run.job_id}) {state} without a reason")
    if state == "success" and marks[run.run_id] != 1:
        problems.append(f"{run.run_id} succeeded, started {marks[run.run_id]} times")
    if run.job_id in JOBS:
        want = expected(run.job_id, dict(run.args), run.run_id)
        # stdout: what a program says on stderr (a write refused by a full disk,
        # say) is not what it writes.
        got = store.output(run.run_id, name=OutputName.STDOUT)
        if state == "success" and not stopped and got != want:
            problems.append(f"{run.run_id} output {len(got)} bytes, not its {len(want)}")
        elif not want.startswith(got):
            problems.append(f"{run.run_id} ({state}) output is not a prefix of what it writes")
        if got and marks[run.run_id] == 0:
            problems.append(f"{run.run_id} has output but its program never started")
    return problems


def _reason(message: str | None) -> str:
    """A run's message without what differs from run to run (ids, numbers)."""
    words = (message or "").split()
    return " ".join("N" if any(c.isdigit() for c in w) else w for w in words)[:80]


def _check_sequence(world: World, acked: int) -> list[str]:
    """The agent's outbox: every event numbered was acknowledged, and the server's
    ack is the agent's last number (nothing skipped past, nothing restarted)."""
    path = world.agent_dir / "outbox.sqlite"
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        left = conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    finally:
        conn.close()
    last = int(meta.get("next_seq", 1)) - 1
    problems = []
    if last != acked:
        problems.append(f"agent's last seq {last}, the server's ack {acked}")
    if left:
        problems.append(f"{left} events never acknowledged")
    return problems


def _check_logs(text: str, wipes: int) -> list[str]:
    """Lines that say the two sides' sequences disagreed (a new sequence only as
    often as the agent's state was wiped)."""
    bad = ("gap after seq", "the server is behind", "Traceback")
    found = [
        f"log: {line.strip()[:300]}" for line in text.splitlines() if any(b in line for b in bad)
    ]
    new = [line for line in text.splitlines() if "a new event sequence" in line]
    if len(new) > wipes:
        found += [f"log ({len(new)} new sequences, {wipes} wipes): {line[:300]}" for line in new]
    return found


def _check_processes(agent_dir: Path) -> list[str]:
    """No program left alive, no process dir left."""
    problems = []
    procs = agent_dir / "procs"
    for pid_file in procs.glob("*/pid") if procs.is_dir() else []:
        with contextlib.suppress(OSError, ValueError, KeyError):
            facts = json.loads(pid_file.read_text())
            if group_alive(int(facts["pgid"])):
                problems.append(f"left running: {pid_file.parent.name}")
    if procs.is_dir() and any(procs.iterdir()):
        problems.append(f"process dirs left: {sorted(p.name for p in procs.iterdir())}")
    return problems
