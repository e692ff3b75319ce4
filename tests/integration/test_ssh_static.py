"""A statically configured agent (`apsis-agent serve` on a provisioned state dir, as
under systemd) runs jobs without any ssh, its certificate trusted through the
server's CA, another CA or a pinned self-signed certificate; the upgrade path drains an agent of
another version and replaces it without losing its run."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from apsis_agent.provision import provision
from apsis_agent.state import StateDir
from apsis_common import tls
from apsis_common.names import check_host
from apsis_server.agents.events import PATH
from tests.harness import Server, read_port, wait_for
from tests.sshd import SshWorld, agent_command, agent_pid, have_ssh, kill_agent, run_agent

JOBS = {
    "on service": "program: {type: shell, host: svc, command: 'echo static $(whoami)'}\n",
    "remote": "program: {type: shell, host: 127.0.0.1, command: 'echo new'}\n",
    "remote slow": "program: {type: shell, host: 127.0.0.1, command: 'echo a; sleep 2; echo b'}\n",
}


def _configure(server: Server, entry: str) -> None:
    """Add static agent `svc` (its flow-style `entry`) to the server's config."""
    with server.config_file.open("a") as config:
        config.write(f"agents:\n  heartbeat: 0.5s\n  static:\n    svc: {entry}\n")


def test_static_agent_runs_a_job(tmp_path: Path) -> None:
    agent_dir, secret = tmp_path / "svc-agent", tmp_path / "svc.secret"
    server = Server(tmp_path / "server", JOBS)
    key = provision("svc", "127.0.0.1", server.state, server.url + PATH, agent_dir, secret)
    assert key.secret.hex() == secret.read_text().strip()
    try:
        with _serving(agent_dir, tmp_path / "svc.log") as port:
            _configure(server, f"{{host: 127.0.0.1, port: {port}, secret_file: '{secret}'}}")
            server.start()
            run = server.wait_finished(server.schedule("on service"), 15)
            assert run["state"] == "success", server.get(f"/runs/{run['run_id']}/log")
            assert server.output(run["run_id"]) == b"static root\n"
            assert run_agent(server.state / "apsis.db", run["run_id"]) == "static:svc"
            view = {a["agent_id"]: a for a in server.get("/agents")["agents"]}["static:svc"]
            assert view["kind"] == "static" and view["state"] == "connected", view
            assert view["last_heartbeat"] is not None
    finally:
        server.cleanup()


def test_provision_command_makes_an_agent_the_server_uses(tmp_path: Path) -> None:
    """`apsis-agent provision` as an operator runs it: the state dir and the secret
    file are private, the secret is in no output, and the entry it prints, in the
    server's config, makes a server that runs jobs on the agent (serving on the
    port it got rather than the one given, as the test binds port 0)."""
    agent_dir, secret = tmp_path / "svc-agent", tmp_path / "svc.secret"
    server = Server(tmp_path / "server", JOBS)
    argv = [*agent_command(), "provision", "svc", "--host", "127.0.0.1", "--port", "5007"]
    argv += ["--server-state", str(server.state), "--webhook-url", server.url + PATH]
    argv += ["--state-dir", str(agent_dir), "--secret-file", str(secret)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    hex_secret = secret.read_text().strip()
    assert len(hex_secret) == 64
    assert hex_secret not in done.stdout and hex_secret not in done.stderr
    assert hex_secret in (agent_dir / "keys.json").read_text()
    assert secret.stat().st_mode & 0o777 == 0o600
    assert agent_dir.stat().st_mode & 0o777 == 0o700
    for path in agent_dir.iterdir():
        assert path.stat().st_mode & 0o777 == (0o700 if path.is_dir() else 0o600), path
    entry = yaml.safe_load(done.stdout)
    assert entry == {
        "agents": {
            "static": {
                "svc": {
                    "host": "127.0.0.1",
                    "port": 5007,
                    "key_id": "svc",
                    "secret_file": str(secret.resolve()),
                }
            }
        }
    }
    try:
        with _serving(agent_dir, tmp_path / "svc.log") as port:
            entry["agents"]["static"]["svc"]["port"] = port
            with server.config_file.open("a") as config:
                config.write(yaml.safe_dump(entry))
            server.start()
            run = server.wait_finished(server.schedule("on service"), 15)
            assert run["state"] == "success", server.get(f"/runs/{run['run_id']}/log")
            assert server.output(run["run_id"]) == b"static root\n"
            assert run_agent(server.state / "apsis.db", run["run_id"]) == "static:svc"
    finally:
        server.cleanup()


def test_provision_command_refuses_a_bad_host(tmp_path: Path) -> None:
    argv = [*agent_command(), "provision", "svc", "--host", "a b, port: 1"]
    argv += ["--server-state", str(tmp_path / "state"), "--webhook-url", "http://x/"]
    argv += ["--state-dir", str(tmp_path / "agent"), "--secret-file", str(tmp_path / "s")]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1 and "bad host name" in done.stderr, done
    assert not (tmp_path / "agent").exists() and not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    ("host", "ok"),
    [
        ("batch1.example.com", True),
        ("127.0.0.1", True),
        ("::1", True),
        ("[::1]", True),
        ("h_1", True),
        ("-x", False),  # would read as an ssh option
        ("a b", False),
        ("", False),
        ("a}b", False),
    ],
)
def test_the_host_names_provision_and_the_server_config_accept(host: str, ok: bool) -> None:
    """One check (apsis_common.names) for both: nothing provisioned that the server
    then refuses, nothing the server accepts refused."""
    if ok:
        assert check_host(host) == host
    else:
        with pytest.raises(ValueError, match="bad host name"):
            check_host(host)


@pytest.mark.parametrize("trust", ["another CA", "pinned", "wrong pin"])
def test_static_agent_certificate_trusted_through_ca_file(tmp_path: Path, trust: str) -> None:
    """`ca_file` names the CA that issued the agent's certificate (a company's, say),
    or pins the agent's self-signed certificate; any other certificate is refused."""
    agent_dir, secret, pem = tmp_path / "svc-agent", tmp_path / "svc.secret", tmp_path / "svc.pem"
    server = Server(tmp_path / "server", JOBS)
    provision("svc", "127.0.0.1", server.state, server.url + PATH, agent_dir, secret)
    if trust == "another CA":
        company = tls.new_ca("Company CA")
        cert = tls.new_cert(company, ("127.0.0.1",), "svc")
        pem.write_text(company.cert_pem)
    else:
        cert = _self_signed("127.0.0.1")
        pem.write_text((cert if trust == "pinned" else _self_signed("127.0.0.1")).cert_pem)
    state = StateDir(agent_dir)  # the agent serves this certificate instead of provision's
    tls.write_private(state.key_file, cert.key_pem)
    tls.write_private(state.cert_file, cert.cert_pem)
    try:
        with _serving(agent_dir, tmp_path / "svc.log") as port:
            entry = f"{{host: 127.0.0.1, port: {port}, secret_file: '{secret}', ca_file: '{pem}'}}"
            _configure(server, entry)
            server.start()
            run_id = server.schedule("on service")
            if trust == "wrong pin":
                agent = _wait_agent_error(server, "static:svc")
                assert "certificate verify failed" in agent["error"], agent
                assert server.get(f"/runs/{run_id}")["run"]["state"] in ("starting", "error")
                assert not any(state.procs.iterdir()), "the agent started something"
                return
            run = server.wait_finished(run_id, 15)
            assert run["state"] == "success", server.get(f"/runs/{run['run_id']}/log")
            assert server.output(run["run_id"]) == b"static root\n"
    finally:
        server.cleanup()


def _self_signed(host: str) -> tls.CertPair:
    """A key and a self-signed (not CA) certificate for `host`."""
    key_pem = tls.new_key_pem()
    key = serialization.load_pem_private_key(key_pem.encode(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]), False
        )
        .sign(key, hashes.SHA256())
    )
    return tls.CertPair(cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem)


def _wait_agent_error(server: Server, agent_id: str) -> dict[str, Any]:
    def failed() -> dict[str, Any] | None:
        agent = {a["agent_id"]: a for a in server.get("/agents")["agents"]}[agent_id]
        return agent if agent.get("error") else None

    return wait_for(failed, 15, f"{agent_id} to report an error")


@contextlib.contextmanager
def _serving(agent_dir: Path, log_path: Path) -> Iterator[int]:
    """A static agent serving `agent_dir` (as its systemd unit would, but on port 0);
    the port it listens on, read back from its state dir."""
    port_file = StateDir(agent_dir).port_file
    port_file.unlink(missing_ok=True)
    argv = [*agent_command(), "serve", "--state-dir", str(agent_dir)]
    argv += ["--bind", "127.0.0.1", "--port", "0", "--heartbeat", "0.5"]
    with log_path.open("wb") as log:
        agent = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)

        def listening() -> int | None:
            if agent.poll() is not None:
                raise AssertionError(f"the static agent exited {agent.returncode}")
            return read_port(port_file)

        try:
            yield wait_for(listening, 10, "the static agent to listen")
        finally:
            agent.kill()
            agent.wait(5)
            kill_agent(agent_dir)


def _old_agent(tmp_path: Path, flag: Path) -> Path:
    """A wrapper remote command: while `flag` exists, run a copy of the agent that
    reports version 0.0.1-old (once); then this checkout's agent."""
    old = tmp_path / "old"
    root = Path(__file__).resolve().parents[2]
    for package in ("apsis_agent", "apsis_common"):
        shutil.copytree(root / package, old / package)
    init = old / "apsis_common" / "__init__.py"
    init.write_text(init.read_text().replace('__version__ = "', '__version__ = "0.0.1-old+'))
    wrapper = tmp_path / "agent.sh"
    wrapper.write_text(
        "#!/bin/sh\n"
        f"if [ -e '{flag}' ]; then rm -f '{flag}'; "
        f"PYTHONPATH='{old}' exec '{sys.executable}' -m apsis_agent \"$@\"; fi\n"
        f"exec '{sys.executable}' -m apsis_agent \"$@\"\n"
    )
    wrapper.chmod(0o755)
    return wrapper


@pytest.mark.skipif(not have_ssh(), reason="needs openssh-server and openssh-client")
def test_busy_agent_of_another_version_is_drained_and_replaced(
    tmp_path: Path, world: SshWorld
) -> None:
    from tests.sshd import agents_yaml

    world.start("127.0.0.1")
    flag, state = tmp_path / "use-old", tmp_path / "remote-agent"
    flag.touch()
    wrapper = _old_agent(tmp_path, flag)
    config = agents_yaml(world, {"127.0.0.1": state}, [str(wrapper)])
    server = Server(tmp_path / "server", JOBS, config + "  upgrade: false\n")
    try:
        server.start()
        slow = server.schedule("remote slow")
        server.wait_state(slow, "running", 20)
        view = {a["agent_id"]: a for a in server.get("/agents")["agents"]}["ssh:127.0.0.1"]
        assert view["version"].startswith("0.0.1-old"), view
        old_pid = agent_pid(state)
        # Restart the server with upgrades on: it attaches, sees the old version and
        # drains the agent, which finishes its run before it exits.
        server.stop()
        server.config_file.write_text(
            server.config_file.read_text().replace("upgrade: false", "upgrade: true")
        )
        server.start()
        run = server.wait_finished(slow, 20)
        assert run["state"] == "success" and server.output(slow) == b"a\nb\n", run

        def replaced() -> bool:
            view = {a["agent_id"]: a for a in server.get("/agents")["agents"]}["ssh:127.0.0.1"]
            return view["state"] == "connected" and not view["version"].startswith("0.0.1")

        wait_for(replaced, 15, "the agent to be replaced")
        assert agent_pid(state) != old_pid
        after = server.wait_finished(server.schedule("remote"), 15)
        assert after["state"] == "success" and server.output(after["run_id"]) == b"new\n"
        log = server.log_file.read_text()
        assert "draining it to replace it" in log
    finally:
        server.cleanup()
        kill_agent(state)
