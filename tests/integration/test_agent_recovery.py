"""Recovery: the agent is killed (SIGKILL) and restarted; programs and facts survive."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from apsis_common import codec
from apsis_common.protocol import (
    AgentStarted,
    ProcExited,
    ProcLost,
    ProcSignaled,
    ProcSpec,
    ProcStarted,
    ProcStartFailed,
    StopRequest,
    StopSpec,
)
from tests.agent_harness import Agent, Receiver, kill_daemon, pid_alive, running_agent, serve, sh
from tests.harness import wait_for


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[tuple[Agent, Receiver]]:
    with running_agent(tmp_path) as pair:
        yield pair


@contextlib.contextmanager
def restarted(a: Agent) -> Iterator[subprocess.Popen[bytes]]:
    """Kill the daemon with SIGKILL and start it again in the foreground (as systemd)."""
    kill_daemon(a.state_dir, signal.SIGKILL)
    proc = serve(a.state_dir, "--heartbeat", "0.5")
    try:
        yield proc
    finally:
        kill_daemon(a.state_dir)
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _contiguous(rx: Receiver) -> None:
    seqs = rx.seqs()
    assert seqs == list(range(1, len(seqs) + 1))


def test_killed_agent_readopts_running_program(agent: tuple[Agent, Receiver]) -> None:
    a, rx = agent
    a.start(("survivor", sh("echo a; sleep 1.5; echo b; exit 3")))
    wait_for(lambda: rx.output("survivor") == b"a\n", what="the first line")
    pid = rx.events("survivor", ProcStarted)[0].pid
    with restarted(a):
        assert pid_alive(pid), "the program must outlive the agent"
        exited = wait_for(lambda: rx.exited("survivor"), 10, "the exit after restart")
        assert exited.exit.exit_code == 3
        assert rx.output("survivor") == b"a\nb\n"
        assert exited.output_length == 4
        starts = rx.events(kind=AgentStarted)
        assert [(s.epoch, s.recovered) for s in starts] == [(1, 0), (2, 1)]
        assert len(rx.events("survivor", ProcStarted)) == 1
        _contiguous(rx)
        assert rx.state.epochs[-1] == 2


def test_program_exits_while_agent_is_down(agent: tuple[Agent, Receiver]) -> None:
    a, rx = agent
    a.start(("quick", sh("echo a; sleep 0.3; echo b; exit 5")))
    wait_for(lambda: rx.output("quick") == b"a\n", what="the first line")
    kill_daemon(a.state_dir, signal.SIGKILL)
    wait_for(lambda: (a.state_dir / "procs" / "quick" / "exit").exists(), what="the exit file")
    with restarted(a):
        exited = wait_for(lambda: rx.exited("quick"), what="the exit after restart")
        assert exited.exit.exit_code == 5
        assert rx.output("quick") == b"a\nb\n"
        _contiguous(rx)


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def test_shim_and_spawner_killed_too_is_lost_and_group_killed(
    agent: tuple[Agent, Receiver],
) -> None:
    """With the daemon, the shim and the spawner gone, nobody can learn how the
    program ends: the restarted agent watches it, and once it has ended reports it
    lost and kills what is left of its group."""
    a, rx = agent
    a.start(("orphan", sh("sleep 60 & echo ready; wait")))
    wait_for(lambda: rx.output("orphan") == b"ready\n", what="the program")
    facts = json.loads((a.state_dir / "procs" / "orphan" / "pid").read_text())
    kill_daemon(a.state_dir, signal.SIGKILL)
    for pid in (facts["spawner_pid"], facts["shim_pid"]):
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not pid_alive(pid), what="the shim and the spawner to die")  # noqa: B023
    with restarted(a):
        wait_for(lambda: rx.state.epochs[-1:] == [2], what="the restarted agent")
        assert not rx.events("orphan", ProcLost), "a running program is not lost"
        os.kill(facts["pid"], signal.SIGKILL)  # the program ends: no one reaps it for us
        lost = wait_for(lambda: rx.events("orphan", ProcLost), what="proc.lost")
        assert lost[0].reason == "shim_vanished"
        wait_for(lambda: _group_gone(facts["pgid"]), what="the survivors to be killed")
        _contiguous(rx)


def test_shim_killed_while_the_agent_is_down(agent: tuple[Agent, Receiver]) -> None:
    """A shim killed while the daemon is down leaves its programs to the spawner,
    which outlives the daemon while it has programs to watch: the restarted agent
    reports their true exits."""
    a, rx = agent
    a.start(("one", sh("echo $PPID; sleep 2; exit 3")), ("two", sh("echo $PPID; sleep 60; exit 4")))
    wait_for(lambda: rx.output("one") and rx.output("two"), what="both programs")
    assert rx.output("one") == rx.output("two"), "one shim should run both"
    facts = [json.loads((a.state_dir / "procs" / p / "pid").read_text()) for p in ("one", "two")]
    kill_daemon(a.state_dir, signal.SIGKILL)
    os.kill(facts[0]["shim_pid"], signal.SIGKILL)
    wait_for(lambda: not pid_alive(facts[0]["shim_pid"]), what="the shim to die")
    with restarted(a):
        assert pid_alive(facts[0]["spawner_pid"]), "the spawner outlives the daemon"
        one = wait_for(lambda: rx.exited("one"), 10, "the first program's exit")
        assert one.exit.exit_code == 3 and rx.output("one").endswith(b"\n")
        assert not rx.events("two", ProcLost) and not rx.exited("two")
        a.request("POST", "/procs/two/stop", codec.encode(StopRequest(grace=5)))
        two = wait_for(lambda: rx.exited("two"), 10, "the second program's exit")
        assert two.exit.signal == signal.SIGTERM
        wait_for(lambda: not pid_alive(facts[0]["spawner_pid"]), 5, "the old spawner to leave")
        _contiguous(rx)


def test_readopted_exit_is_reported_while_its_shim_runs_another(
    agent: tuple[Agent, Receiver],
) -> None:
    """After a restart, a re-adopted program's exit is reported when it ends, though
    its shim (talking to the old daemon) stays for another program of its share."""
    a, rx = agent
    a.start(("short", sh("echo $PPID; sleep 1; exit 6")), ("long", sh("echo $PPID; sleep 60")))
    wait_for(lambda: rx.output("short") and rx.output("long"), what="both programs")
    assert rx.output("short") == rx.output("long"), "one shim should run both"
    with restarted(a):
        exited = wait_for(lambda: rx.exited("short"), 10, "the short program's exit")
        assert exited.exit.exit_code == 6
        assert not rx.exited("long")
        a.request("POST", "/procs/long/stop", codec.encode(StopRequest()))
        long = wait_for(lambda: rx.exited("long"), 10, "the long program's exit")
        assert long.exit.signal == signal.SIGTERM
        _contiguous(rx)


def test_crash_between_spec_and_spawn(agent: tuple[Agent, Receiver]) -> None:
    a, rx = agent
    kill_daemon(a.state_dir, signal.SIGKILL)
    # What the agent leaves behind when it dies right after writing the spec.
    directory = a.state_dir / "procs" / "half"
    directory.mkdir(mode=0o700)
    (directory / "spec").write_bytes(codec.encode_json(ProcSpec(argv=("true",))))
    proc = serve(a.state_dir, "--heartbeat", "0.5")
    try:
        failed = wait_for(lambda: rx.events("half", ProcStartFailed), what="start_failed")
        assert failed[0].error == "agent stopped during start"
        assert not rx.events("half", ProcStarted)
    finally:
        kill_daemon(a.state_dir)
        proc.wait()


def test_a_start_a_shim_claimed_is_never_made_again(agent: tuple[Agent, Receiver]) -> None:
    """The daemon died during a start batch; a shim of the old spawner took one of
    its starts (its `claim`) but had not written the pid when the new daemon looked:
    the new one cannot start it again (the shim may have), so it is lost — and a
    start the new daemon took first fails as interrupted (and no old shim can make
    it then: see test_the_first_claim_owns_the_start)."""
    a, rx = agent
    kill_daemon(a.state_dir, signal.SIGKILL)
    for name in ("taken", "free"):
        directory = a.state_dir / "procs" / name
        directory.mkdir(mode=0o700)
        (directory / "spec").write_bytes(codec.encode_json(ProcSpec(argv=("true",))))
    (a.state_dir / "procs" / "taken" / "claim").touch()  # a shim got there first
    proc = serve(a.state_dir, "--heartbeat", "0.5")
    try:
        lost = wait_for(lambda: rx.events("taken", ProcLost), what="proc.lost")
        assert lost[0].reason == "shim_vanished" and not rx.events("taken", ProcStartFailed)
        failed = wait_for(lambda: rx.events("free", ProcStartFailed), what="start_failed")
        assert failed[0].error == "agent stopped during start"
    finally:
        kill_daemon(a.state_dir)
        proc.wait()


def test_stop_deadline_survives_restart(agent: tuple[Agent, Receiver]) -> None:
    a, rx = agent
    script = "trap '' TERM; echo ready; sleep 60 & wait"
    a.start(("stubborn", sh(script, stop=StopSpec(grace=1.0))))
    wait_for(lambda: rx.output("stubborn") == b"ready\n", what="the trap")
    a.request("POST", "/procs/stubborn/stop", codec.encode(StopRequest()))
    wait_for(lambda: rx.events("stubborn", ProcSignaled), what="SIGTERM")
    with restarted(a):
        exited = wait_for(lambda: rx.exited("stubborn"), what="the SIGKILL after restart")
        assert exited.exit.signal == signal.SIGKILL
        reasons = [s.reason for s in rx.events("stubborn", ProcSignaled)]
        assert reasons == ["stop", "escalation"]
        _contiguous(rx)


def test_events_wait_while_the_server_is_down(agent: tuple[Agent, Receiver]) -> None:
    a, rx = agent
    rx.refuse = True
    a.start(*[(f"p{i}", sh(f"echo {i}; exit {i}")) for i in range(20)])
    wait_for(lambda: all((a.state_dir / "procs" / f"p{i}" / "exit").exists() for i in range(20)))
    # The agent restarts while nothing is acknowledged: numbers are not reused.
    with restarted(a):
        rx.refuse = False
        for i in range(20):
            exited = wait_for(lambda: rx.exited(f"p{i}"), what=f"p{i}")  # noqa: B023
            assert exited.exit.exit_code == i
            assert rx.output(f"p{i}") == f"{i}\n".encode()
        _contiguous(rx)
        assert [e.epoch for e in rx.events(kind=AgentStarted)] == [1, 2]
        assert all(len(rx.events(f"p{i}", ProcExited)) == 1 for i in range(20))


def test_sigterm_leaves_programs_running(agent: tuple[Agent, Receiver]) -> None:
    a, rx = agent
    a.start(("long", sh("echo a; sleep 2; echo b")))
    wait_for(lambda: rx.output("long") == b"a\n")
    pid = rx.events("long", ProcStarted)[0].pid
    kill_daemon(a.state_dir, signal.SIGTERM)
    assert pid_alive(pid)
    proc = serve(a.state_dir, "--heartbeat", "0.5")
    try:
        exited = wait_for(lambda: rx.exited("long"), what="the exit")
        assert exited.exit.exit_code == 0 and rx.output("long") == b"a\nb\n"
    finally:
        kill_daemon(a.state_dir)
        proc.wait()


def test_reused_shim_survives_a_killed_agent_then_leaves(agent: tuple[Agent, Receiver]) -> None:
    """A shim on its second program outlives the daemon like a fresh one, reports
    through the restarted agent, and ends once its program has (its spawner is gone)."""
    a, rx = agent
    a.start(("warm", sh("echo $PPID")))
    wait_for(lambda: rx.exited("warm"), what="the first program")
    shim = int(rx.output("warm"))
    a.start(("second", sh("echo $PPID; sleep 1.5; exit 6")))
    wait_for(lambda: rx.output("second"), what="the second program")
    assert int(rx.output("second")) == shim, "the idle shim should run the second program"
    with restarted(a):
        assert pid_alive(shim), "the shim must outlive the agent"
        exited = wait_for(lambda: rx.exited("second"), 10, "the exit after restart")
        assert exited.exit.exit_code == 6
        wait_for(lambda: not pid_alive(shim), 5, "the orphaned shim to leave")
        _contiguous(rx)
