"""Remote agents over a real sshd on loopback: bootstrap, attach, recovery, ssh failures."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.harness import Server, running_server, wait_for
from tests.sshd import (
    SshWorld,
    agent_pid,
    agents_yaml,
    have_ssh,
    kill_agent,
    run_agent,
)

pytestmark = pytest.mark.skipif(not have_ssh(), reason="needs openssh-server and openssh-client")

JOBS = {
    "hello": "program: {type: shell, host: 127.0.0.1, command: 'echo hello from $(whoami)'}\n",
    "slow": "program: {type: shell, host: 127.0.0.1, command: 'echo a; sleep 2; echo b'}\n",
    "true": "program: {type: program, host: 127.0.0.1, argv: [/bin/true]}\n",
    "env": "program: {type: shell, host: 127.0.0.1, command: 'env | grep ^SSH_ | sort'}\n",
}


def agent_of(server: Server, agent_id: str) -> dict[str, object]:
    agents = {a["agent_id"]: a for a in server.get("/agents")["agents"]}
    return agents[agent_id]  # type: ignore[no-any-return]


def test_bootstrap_attach_and_recover(tmp_path: Path, world: SshWorld) -> None:
    world.start("127.0.0.1")
    state = tmp_path / "remote-agent"
    config = agents_yaml(world, {"127.0.0.1": state})
    with running_server(tmp_path / "server", JOBS, config) as server:
        try:
            first = server.wait_finished(server.schedule("hello"), 20)
            assert first["state"] == "success", server.get(f"/runs/{first['run_id']}/log")
            assert run_agent(server.state / "apsis.db", first["run_id"]) == "ssh:127.0.0.1"
            assert server.output(first["run_id"]) == b"hello from root\n"
            pid = wait_for(lambda: agent_pid(state), 5, "the agent's pid")
            # The secret never went on a command line: not in the daemon's argv.
            key = json.loads((server.state / "agents/ssh:127.0.0.1.json").read_text())
            assert key["secret"].encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
            # A second run attaches to the same agent.
            second = server.wait_finished(server.schedule("hello"), 20)
            assert second["state"] == "success"
            assert agent_pid(state) == pid
            view = agent_of(server, "ssh:127.0.0.1")
            assert view["state"] == "connected" and view["kind"] == "ssh", view
            assert view["host"] == "127.0.0.1" and view["version"]
            # SIGKILL the agent mid-run: the run recovers, the next run too.
            slow = server.schedule("slow")
            server.wait_state(slow, "running", 20)
            wait_for(lambda: server.output(slow) == b"a\n", 10, "first line")
            kill_agent(state, procs=False)
            assert server.wait_finished(slow, 20)["state"] == "success"
            assert server.output(slow) == b"a\nb\n"
            third = server.wait_finished(server.schedule("hello"), 20)
            assert third["state"] == "success"
            assert agent_pid(state) not in (None, pid)
            # Programs get the host's environment, not the ssh session's that
            # started their agent (grep finds nothing: exit 1, a failure).
            env = server.wait_finished(server.schedule("env"), 20)
            assert server.output(env["run_id"]) == b"", server.output(env["run_id"])
        finally:
            kill_agent(state)


def _error_of(server: Server, job: str) -> str:
    run = server.wait_finished(server.schedule(job), 15)
    assert run["state"] == "error", run
    return str(run["message"])


def test_ssh_failures_have_clear_messages(tmp_path: Path, world: SshWorld) -> None:
    sshd = world.start("127.0.0.1")
    state = tmp_path / "remote-agent"
    jobs = {
        **JOBS,
        "other user": "program: {type: shell, host: 127.0.0.1, user: nobody, command: 'true'}\n",
        "nowhere": "program: {type: shell, host: 127.0.0.9, command: 'true'}\n",
        "missing": "program: {type: shell, host: missing-agent, command: 'true'}\n",
        "local other user": "program: {type: shell, user: nobody, command: 'true'}\n",
    }
    # 127.0.0.9 has no sshd: connection refused. 'missing-agent' is an alias of
    # 127.0.0.1 through ssh_config, with a remote command that does not exist.
    with world.ssh_config.open("a") as f:
        f.write(f"Host missing-agent\n  HostName 127.0.0.1\n  Port {sshd.port}\n")
    with world.known_hosts.open("a") as f:
        f.write(f"[missing-agent]:{sshd.port} {world.host_pub}\n")
    extra = "    missing-agent: {remote_command: /nonexistent/apsis-agent}\n"
    config = agents_yaml(world, {"127.0.0.1": state}).replace(
        f"  hosts: {{'127.0.0.1': {{state_dir: '{state}', bind: '127.0.0.1'}}}}\n",
        f"  hosts:\n    '127.0.0.1': {{state_dir: '{state}', bind: '127.0.0.1'}}\n{extra}",
    )
    with running_server(tmp_path / "server", jobs, config) as server:
        try:
            message = _error_of(server, "missing")
            assert "apsis-agent not found on missing-agent" in message, message
            # A host-less program for another user goes to a local agent started with
            # sudo; here the user cannot run this checkout's Python (or has no sudo rule).
            message = _error_of(server, "local other user")
            assert message.startswith("cannot start the agent of user nobody with sudo"), message
            message = _error_of(server, "nowhere")
            assert message.startswith("ssh failed: ssh to 127.0.0.9"), message
            assert "Connection refused" in message, message
            # 'nobody' has no key in authorized_keys... and no shell: refused by sshd.
            message = _error_of(server, "other user")
            assert message.startswith("permission denied: ssh to nobody@127.0.0.1"), message
            # A wrong host key for 127.0.0.1: strict checking refuses it.
            other = world.root / "other_key"
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True
            )
            pub = other.with_suffix(".pub").read_text()
            world.known_hosts.write_text(f"[127.0.0.1]:{sshd.port} {pub}")
            message = _error_of(server, "hello")
            assert message.startswith("host key mismatch for 127.0.0.1"), message
        finally:
            kill_agent(state)


def test_ssh_client_missing(tmp_path: Path, world: SshWorld) -> None:
    config = agents_yaml(world, {}).replace(
        world.ssh_yaml(), "ssh: {command: [/nonexistent/ssh]}\n"
    )
    with running_server(tmp_path / "server", JOBS, config) as server:
        message = _error_of(server, "hello")
        assert message.startswith("ssh failed: cannot run /nonexistent/ssh"), message


def test_idle_agent_stops_and_comes_back(tmp_path: Path, world: SshWorld) -> None:
    world.start("127.0.0.1")
    state = tmp_path / "remote-agent"
    config = agents_yaml(world, {"127.0.0.1": state}, extra="  idle_stop: 1s\n")
    with running_server(tmp_path / "server", JOBS, config) as server:
        try:
            assert server.wait_finished(server.schedule("true"), 20)["state"] == "success"
            pid = wait_for(lambda: agent_pid(state), 5, "the agent's pid")

            def stopped() -> bool:
                return bool(agent_of(server, "ssh:127.0.0.1")["state"] == "stopped")

            wait_for(stopped, 10, "the idle agent to be seen stopped")
            assert server.wait_finished(server.schedule("true"), 20)["state"] == "success"
            assert agent_pid(state) not in (None, pid)
        finally:
            kill_agent(state)
