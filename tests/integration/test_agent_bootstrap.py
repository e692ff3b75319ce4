"""Bootstrap (start or attach, key rotation), HTTPS webhooks, and the CLI commands."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from apsis_common import codec, protocol, tls
from apsis_common.auth import Key
from apsis_common.protocol import AgentInfo, AgentStarted, ProcSpec, ProcStarted
from tests.agent_harness import (
    ROOT,
    Receiver,
    agent_command,
    bootstrap,
    hello,
    kill_daemon,
    pid_alive,
    run_bootstrap,
    running_agent,
    sh,
)
from tests.harness import wait_for


def _cli(state_dir: Path, *args: str) -> tuple[int, dict[str, object]]:
    done = subprocess.run(
        agent_command(*args, "--state-dir", str(state_dir)),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
        check=False,
    )
    return done.returncode, json.loads(done.stdout.strip().splitlines()[-1])


def test_second_bootstrap_attaches_and_rotates_keys(tmp_path: Path) -> None:
    ca = tls.new_ca()
    first, second, third = Key.generate(), Key.generate(), Key.generate()
    keys = {k.key_id: k.secret for k in (first, second, third)}
    state_dir = tmp_path / "agent"
    with Receiver(keys) as rx:
        a = bootstrap(state_dir, rx, ca, first)
        try:
            assert not a.ready.attached and a.ready.epoch == 1
            b = bootstrap(state_dir, rx, ca, second)
            assert b.ready.attached and b.ready.pid == a.pid and b.ready.port == a.ready.port
            assert b.ready.epoch == 1
            # Both keys are valid during the rotation.
            assert a.request("GET", "/agent").status_code == 200
            assert b.request("GET", "/agent").status_code == 200
            c = bootstrap(state_dir, rx, ca, third)
            assert c.request("GET", "/agent").status_code == 200
            assert b.request("GET", "/agent").status_code == 200
            assert a.request("GET", "/agent").status_code == 401
            # Webhooks are signed with the newest key.
            c.start(("after", ProcSpec(argv=("true",))))
            wait_for(lambda: rx.exited("after"))
            for agent in (a, b, c):
                agent.close()
        finally:
            kill_daemon(state_dir)


def test_bootstrap_errors_are_one_json_line(tmp_path: Path) -> None:
    ca, other_ca = tls.new_ca(), tls.new_ca()
    key = Key.generate()
    done = subprocess.run(
        agent_command("bootstrap", "--state-dir", str(tmp_path / "a")),
        input="this is not json\n",
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
        check=False,
    )
    assert done.returncode != 0
    assert "error" in json.loads(done.stdout.strip())
    bad = hello("agent-1", key, "ftp://nowhere", ca)
    status, lines = run_bootstrap(tmp_path / "b", bad, ca)
    assert status != 0 and "webhook" in str(lines[-1]["error"])
    # A certificate from another CA than the hello's is refused.
    good = hello("agent-1", key, "http://127.0.0.1:9/agent/v1/events", ca)
    status, lines = run_bootstrap(tmp_path / "c", good, other_ca)
    assert status != 0 and "CA" in str(lines[-1]["error"])
    assert not (tmp_path / "c" / "port").exists()


def test_https_webhook_verified_with_the_ca(tmp_path: Path) -> None:
    with running_agent(tmp_path, https=True) as (a, rx):
        a.start(("secure", sh("echo over tls")))
        wait_for(lambda: rx.exited("secure"))
        assert rx.output("secure") == b"over tls\n"
        assert rx.state.rejected == 0


def test_status_stop_and_restart_keep_programs(tmp_path: Path) -> None:
    with running_agent(tmp_path) as (a, rx):
        status, info = _cli(a.state_dir, "status")
        assert status == 0
        parsed = codec.from_plain(AgentInfo, info)
        assert parsed.pid == a.pid and parsed.agent_id == "agent-1" and not parsed.draining
        a.start(("keeps", sh("sleep 30")))
        started = wait_for(lambda: rx.events("keeps", ProcStarted))[0]
        status, stopped = _cli(a.state_dir, "stop")
        assert status == 0 and stopped == {"stopped": a.pid}
        assert pid_alive(started.pid)
        status, error = _cli(a.state_dir, "status")
        assert status != 0 and "error" in error
        # A new bootstrap starts a new daemon, which re-adopts the program.
        again = bootstrap(a.state_dir, rx, a.ca, a.key, "--heartbeat", "0.5")
        try:
            assert not again.ready.attached and again.ready.epoch == 2
            wait_for(lambda: len(rx.events(kind=AgentStarted)) == 2)
            assert rx.events(kind=AgentStarted)[-1].recovered == 1
        finally:
            again.close()


def test_drain_refuses_starts_then_exits_when_idle(tmp_path: Path) -> None:
    with running_agent(tmp_path) as (a, rx):
        a.start(("last", sh("sleep 0.5")))
        wait_for(lambda: rx.events("last", ProcStarted))
        status, info = _cli(a.state_dir, "drain")
        assert status == 0 and info["draining"] is True
        refused = a.request("PUT", "/procs/new", codec.encode(ProcSpec(argv=("true",))))
        assert refused.status_code == 503 and refused.headers["retry-after"]
        batch = a.request("POST", "/procs", codec.encode(protocol.StartBatch(())))
        assert batch.status_code == 503
        wait_for(lambda: rx.exited("last"), what="the last run")
        wait_for(lambda: not pid_alive(a.pid), what="the drained agent to exit")


def test_idle_stop(tmp_path: Path) -> None:
    with running_agent(tmp_path, False, "--idle-stop", "0.5") as (a, rx):
        a.start(("brief", ProcSpec(argv=("true",))))
        wait_for(lambda: rx.exited("brief"))
        wait_for(lambda: not pid_alive(a.pid), what="the idle agent to stop")
