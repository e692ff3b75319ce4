"""Host groups served by two "hosts": sshd + agent pairs on 127.0.0.1 and 127.0.0.2,
each agent with its own state dir. Runs spread per policy; a member cut off (sshd
stopped, agent killed) gets no new runs and its running runs hit the lost timeout."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from tests.harness import Server, running_server, wait_for
from tests.sshd import SshWorld, agents_yaml, have_ssh, kill_agent, run_agent

pytestmark = pytest.mark.skipif(not have_ssh(), reason="needs openssh-server and openssh-client")

HOSTS = ("127.0.0.1", "127.0.0.2")
JOBS = {
    "quick": "program: {type: shell, host: workers, command: 'echo $APSIS_RUN_ID'}\n",
    "long": "program: {type: program, host: workers, argv: [/bin/sleep, '60']}\n",
    "busy": "program: {type: program, host: idle-first, argv: [/bin/sleep, '60']}\n",
}


def _config(world: SshWorld, tmp_path: Path, policy: str = "round-robin") -> str:
    states = {h: tmp_path / f"agent-{h}" for h in HOSTS}
    return agents_yaml(world, states) + (
        "host_groups:\n"
        f"  workers: {{type: {policy}, hosts: [{', '.join(HOSTS)}]}}\n"
        f"  idle-first: {{type: least-busy, hosts: [{', '.join(HOSTS)}]}}\n"
    )


def _agents(server: Server, run_ids: list[str]) -> Counter[str | None]:
    return Counter(run_agent(server.state / "apsis.db", r) for r in run_ids)


def _cleanup(tmp_path: Path) -> None:
    for host in HOSTS:
        kill_agent(tmp_path / f"agent-{host}")


def test_round_robin_and_cut_off(tmp_path: Path, world: SshWorld) -> None:
    sshds = {h: world.start(h) for h in HOSTS}
    with running_server(tmp_path / "server", JOBS, _config(world, tmp_path)) as server:
        try:
            quick = [server.schedule("quick") for _ in range(6)]
            for run_id in quick:
                assert server.wait_finished(run_id, 20)["state"] == "success"
            assert _agents(server, quick) == {"ssh:127.0.0.1": 3, "ssh:127.0.0.2": 3}
            long = [server.schedule("long") for _ in range(2)]
            for run_id in long:
                server.wait_state(run_id, "running", 20)
            db = server.state / "apsis.db"
            lost = next(r for r in long if run_agent(db, r) == "ssh:127.0.0.2")
            # Cut 127.0.0.2 off: no sshd, no agent (its program dies with it here).
            sshds["127.0.0.2"].stop()
            kill_agent(tmp_path / "agent-127.0.0.2")

            def cut_off() -> bool:
                agents = {a["agent_id"]: a for a in server.get("/agents")["agents"]}
                return bool(agents["ssh:127.0.0.2"]["state"] == "disconnected")

            wait_for(cut_off, 10, "127.0.0.2 to show disconnected")
            after = [server.schedule("quick") for _ in range(4)]
            for run_id in after:
                assert server.wait_finished(run_id, 20)["state"] == "success"
            assert _agents(server, after) == {"ssh:127.0.0.1": 4}
            # Its running run errors at the lost timeout (5 s of silence).
            run = server.wait_finished(lost, 15)
            assert run["state"] == "error" and "unreachable" in run["message"], run
            other = next(r for r in long if r != lost)
            assert server.run(other)["state"] == "running"
            server.post(f"/runs/{other}/kill")
            server.wait_finished(other, 10)
        finally:
            _cleanup(tmp_path)


def test_least_busy(tmp_path: Path, world: SshWorld) -> None:
    for host in HOSTS:
        world.start(host)
    with running_server(tmp_path / "server", JOBS, _config(world, tmp_path)) as server:
        try:
            first = server.schedule("busy")
            server.wait_state(first, "running", 20)
            second = server.schedule("busy")
            server.wait_state(second, "running", 20)
            # The second goes to the idle host; with one run each, ties spread again.
            assert _agents(server, [first, second]) == {"ssh:127.0.0.1": 1, "ssh:127.0.0.2": 1}
            for run_id in (first, second):
                server.post(f"/runs/{run_id}/kill")
                server.wait_finished(run_id, 10)
        finally:
            _cleanup(tmp_path)
