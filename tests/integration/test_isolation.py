"""Isolation: whatever one program does to its shim, its session or its process
table, no other run is touched (spec/05-quality.md, reliability 6b)."""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from apsis_agent import cgroups, spawner
from apsis_agent.daemon import CGROUPS_VARIABLE
from apsis_common import codec
from apsis_common.protocol import (
    ExitInfo,
    ProcExited,
    ProcLost,
    ProcSpec,
    ProcStarted,
    ProcStartFailed,
    Resources,
    StopRequest,
    StopSpec,
)
from tests.agent_harness import Agent, Receiver, running_agent, sh
from tests.harness import running_server, wait_for


def _no_cgroups(tmp_path: Path) -> str:
    """Why this host lets no agent contain runs in cgroups ("" if it does)."""
    layout, why = cgroups.probe(tmp_path / "probe", (os.getpid(),))
    if layout is not None:
        cgroups.release(layout)
    return why


@pytest.fixture(params=["cgroup", "process_group"])
def containment(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> str:
    """How runs are contained: cgroups (where the host allows) or process groups."""
    if request.param == "process_group":
        monkeypatch.setenv(CGROUPS_VARIABLE, "off")
    elif why := _no_cgroups(tmp_path):
        pytest.skip(f"this host lets no agent make cgroups: {why}")
    return str(request.param)


@pytest.fixture
def agent(tmp_path: Path, containment: str) -> Iterator[tuple[Agent, Receiver]]:
    with running_agent(tmp_path) as pair:
        yield pair


@pytest.fixture
def cgroup_agent(tmp_path: Path) -> Iterator[tuple[Agent, Receiver]]:
    if why := _no_cgroups(tmp_path):
        pytest.skip(f"this host lets no agent make cgroups: {why}")
    with running_agent(tmp_path) as pair:
        yield pair


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state first), if any."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].decode().split()
    except OSError:
        return None


def _processes() -> dict[int, list[str]]:
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None:
                found[int(entry)] = stat
    return found


def _in_sessions(sessions: set[int]) -> list[int]:
    """Processes (zombies too) in any of `sessions`."""
    return [pid for pid, stat in _processes().items() if int(stat[3]) in sessions]


def _zombies_of(parents: set[int]) -> list[int]:
    return [pid for pid, s in _processes().items() if s[0] == "Z" and int(s[1]) in parents]


def _spawners(state_dir: Path) -> set[int]:
    """The agent's spawner and shims (they run spawner.py for this state dir)."""
    out = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if b"spawner.py" in cmdline and str(state_dir).encode() in cmdline:
            out.add(int(entry))
    return out


# The innocent programs: each says hello, outlives the misbehaving ones, and ends
# with its own status.
def _innocent(i: int) -> str:
    return f"echo hello {i}; sleep 2; echo bye {i}; exit {i % 5}"


MISBEHAVING = {
    # Kills its shim at once, while the shim still starts the rest of the share.
    3: "kill -9 $PPID; echo killed the shim; exit 6",
    # Kills its shim once every program of the share runs.
    60: "sleep 0.5; kill -9 $PPID; echo killed the shim late; exit 7",
    # Kills its whole session, as `kill -9 -SID` and as `pkill -s`.
    20: "sleep 0.3; kill -9 -$(ps -o sid= $$ | tr -d ' ')",
    40: "sleep 0.3; pkill -9 -s $(ps -o sid= $$); echo not reached",
    # Forks a thousand sleeping children and leaves.
    80: "for i in $(seq 1000); do sleep 3 & done; echo forked; exit 0",
}


def test_one_share_survives_its_misbehaving_programs(
    agent: tuple[Agent, Receiver], containment: str
) -> None:
    a, rx = agent
    ids = [f"p{i:02d}" for i in range(spawner._SHARE)]
    scripts = [MISBEHAVING.get(i, _innocent(i)) for i in range(len(ids))]
    results = a.start(
        *((proc_id, sh(script)) for proc_id, script in zip(ids, scripts, strict=True))
    )
    assert {r.status for r in results.results} == {"accepted"}

    def finals() -> dict[str, ProcExited | ProcLost | ProcStartFailed] | None:
        final = (ProcExited, ProcLost, ProcStartFailed)
        found = {e.proc_id: e for e in rx.events() if isinstance(e, final)}
        return found if len(found) == len(ids) else None

    final = wait_for(finals, 60, "every program to end")
    exits = {p: e.exit for p, e in final.items() if isinstance(e, ProcExited)}
    assert sorted(set(ids) - set(exits)) == [], "every program should end on its own"
    for i, proc_id in enumerate(ids):
        if i in MISBEHAVING:
            continue
        assert (exits[proc_id].exit_code, exits[proc_id].signal) == (i % 5, None), proc_id
        assert rx.output(proc_id) == f"hello {i}\nbye {i}\n".encode(), proc_id
        assert len(rx.events(proc_id, ProcStarted)) == 1
    # The misbehaving ones end as they chose to, with their own status and output.
    assert exits["p03"].exit_code == 6 and rx.output("p03") == b"killed the shim\n"
    assert exits["p60"].exit_code == 7 and rx.output("p60") == b"killed the shim late\n"
    assert exits["p20"].signal == exits["p40"].signal == signal.SIGKILL
    assert exits["p80"].exit_code == 0 and rx.output("p80") == b"forked\n"
    in_cgroup = {e.rusage["cgroup"] for e in exits.values()}
    assert in_cgroup == {1.0 if containment == "cgroup" else 0.0}

    # Nothing is left behind: the forker's children end and are reaped, no zombie
    # lingers under the spawner or a shim.
    sessions = {e.pid for e in rx.events(kind=ProcStarted)}
    wait_for(lambda: not _in_sessions(sessions), 20, "every program's processes to be gone")
    wait_for(lambda: not _zombies_of(_spawners(a.state_dir)), 5, "no zombie left")


# -- containment by cgroups ---------------------------------------------------------


def _exited(rx: Receiver, proc_id: str, timeout: float = 15.0) -> ExitInfo:
    return wait_for(lambda: rx.exited(proc_id), timeout, f"{proc_id} to exit").exit


def _cgroup_of(a: Agent, proc_id: str) -> cgroups.Cgroup:
    facts = json.loads((a.state_dir / "procs" / proc_id / "pid").read_text())
    cgroup = cgroups.from_facts(facts.get("cgroup"))
    assert cgroup is not None, "the run should have a cgroup"
    return cgroup


def test_a_stop_reaches_processes_that_left_the_group(
    cgroup_agent: tuple[Agent, Receiver],
) -> None:
    """A child that escapes with setsid and ignores SIGTERM outlives its process
    group's stop, not its cgroup's: at the end of the grace, nothing is left."""
    a, rx = cgroup_agent
    rx.held.add("escape")  # keep the directory (and its pid file) for a look
    script = (
        "setsid sh -c 'trap \"\" TERM; echo escaped $$; exec sleep 600' & "
        "trap '' TERM; sleep 0.2; echo ready; sleep 600"
    )
    a.start(("escape", sh(script, stop=StopSpec(grace=0.5))))
    wait_for(lambda: rx.output("escape").endswith(b"ready\n"), what="the escape")
    escaped = int(rx.output("escape").split()[1])
    cgroup = _cgroup_of(a, "escape")
    started = rx.events("escape", ProcStarted)[0]
    assert escaped in cgroups.processes(cgroup)
    assert _stat(escaped) is not None and int(_stat(escaped)[3]) != started.pid  # type: ignore[index]
    a.request("POST", "/procs/escape/stop", codec.encode(StopRequest()))
    exit = _exited(rx, "escape")
    assert exit.signal == signal.SIGKILL  # the program ignored SIGTERM too
    wait_for(lambda: _stat(escaped) is None, 5, "the escaped child to be killed")
    assert not cgroups.populated(cgroup)
    wait_for(lambda: not os.path.exists(cgroup.main), 10, "the cgroup to be removed")


def test_memory_limit(cgroup_agent: tuple[Agent, Receiver]) -> None:
    a, rx = cgroup_agent
    limits = Resources(memory=64 << 20)
    hog = ProcSpec(argv=(sys.executable, "-c", "b = b'x' * (256 << 20)"), resources=limits)
    modest = ProcSpec(argv=(sys.executable, "-c", "b = b'x' * (16 << 20)"), resources=limits)
    a.start(("hog", hog), ("modest", modest))
    exit = _exited(rx, "hog")
    assert exit.signal == signal.SIGKILL, exit
    assert exit.rusage["oom_kills"] >= 1
    assert exit.rusage["memory_peak"] <= 64 << 20
    modest_exit = _exited(rx, "modest")
    assert modest_exit.exit_code == 0 and modest_exit.rusage["oom_kills"] == 0
    assert 16 << 20 <= modest_exit.rusage["memory_peak"] <= 64 << 20


def test_pids_limit_stops_a_fork_bomb(cgroup_agent: tuple[Agent, Receiver]) -> None:
    a, rx = cgroup_agent
    bomb = (
        "import os, time\n"
        "forked = 0\n"
        "for _ in range(100):\n"
        "    try:\n"
        "        pid = os.fork()\n"
        "    except OSError:\n"
        "        continue\n"
        "    if pid == 0:\n"
        "        time.sleep(1)\n"
        "        os._exit(0)\n"
        "    forked += 1\n"
        "print(forked)\n"
    )
    spec = ProcSpec(argv=(sys.executable, "-c", bomb), resources=Resources(pids=20))
    a.start(("bomb", spec))
    assert _exited(rx, "bomb").exit_code == 0
    assert int(rx.output("bomb")) == 19  # twenty tasks, the program included


def test_usage_and_cpu_limit(cgroup_agent: tuple[Agent, Receiver]) -> None:
    """The exit of a run with limits carries its cgroup's peak memory and CPU time;
    a CPU limit holds a busy program to its share."""
    a, rx = cgroup_agent
    busy = "import time\nend = time.time() + 1.5\nwhile time.time() < end: pass\n"
    roomy, tight = Resources(memory=1 << 30), Resources(cpu=0.2)
    a.start(
        ("free", ProcSpec(argv=(sys.executable, "-c", busy), resources=roomy)),
        ("held", ProcSpec(argv=(sys.executable, "-c", busy), resources=tight)),
        ("plain", ProcSpec(argv=("true",))),
    )
    free, held, plain = _exited(rx, "free"), _exited(rx, "held"), _exited(rx, "plain")
    assert free.rusage["cgroup"] == held.rusage["cgroup"] == plain.rusage["cgroup"] == 1.0
    assert free.rusage["memory_peak"] > 1 << 20 and held.rusage["memory_peak"] > 1 << 20
    # The cgroup's CPU time is the program's own (its rusage), whatever else the
    # machine is busy with; held to a fifth of a core, the busy loop gets at most
    # ~0.3 s of its 1.5 s (and the interpreter's start).
    for exit in (free, held):
        own = exit.rusage["utime"] + exit.rusage["stime"]
        assert own * 0.9 - 0.02 <= exit.rusage["cpu_time"] <= own + 0.2, exit.rusage
    assert held.rusage["cpu_time"] < 0.6
    # Without limits a run is only contained (the freezer): no cgroup usage.
    assert "memory_peak" not in plain.rusage and "cpu_time" not in plain.rusage


# -- through a real server -----------------------------------------------------------

HOG = [sys.executable, "-c", "b = b'x' * (256 << 20)"]
JOBS = {  # JSON is YAML too
    "hog": "program: "
    + json.dumps({"type": "program", "argv": HOG, "resources": {"memory": "64 MiB"}}),
    "plain": "program: 'echo hello'\n",
}


def test_resources_through_the_server(tmp_path: Path) -> None:
    """A job's `resources` reach the agent; the run's metadata tells how it was
    contained and what it used."""
    if why := _no_cgroups(tmp_path):
        pytest.skip(f"this host lets no agent make cgroups: {why}")
    with running_server(tmp_path / "apsis", JOBS) as server:
        hog = server.wait_finished(server.schedule("hog"), 30)
        assert hog["state"] == "failure", hog
        meta = server.meta(hog["run_id"])
        assert meta["signal"] == "SIGKILL" and meta["rusage"]["oom_kills"] >= 1
        assert meta["rusage"]["cgroup"] == 1 and meta["rusage"]["memory_peak"] <= 64 << 20
        assert meta["rusage"]["cpu_time"] > 0
        plain = server.wait_finished(server.schedule("plain"), 30)
        assert plain["state"] == "success"
        assert server.meta(plain["run_id"])["rusage"]["cgroup"] == 1
