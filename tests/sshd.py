"""A real OpenSSH server for tests, and a client configuration that trusts only it.

`SshWorld(root)` makes, in a temporary directory, a host key, a client key, an
`authorized_keys` file, a `known_hosts` file and an `ssh_config`; `start(address)`
runs `/usr/sbin/sshd -D -e -f CONFIG` on a free port of that loopback address
(127.0.0.1, 127.0.0.2, ... are all loopback on Linux, so each address is one
"host"). The client never reads the user's own ssh files: the config sets the
identity, known hosts and `BatchMode yes`, and the server's config points ssh at it
with `-F`. Agents that the tests bootstrap over ssh are daemons; `kill_agent`
stops one by its state dir, with everything it started.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

from tests.harness import pid_alive, wait_for

SSHD = "/usr/sbin/sshd"


def have_ssh() -> bool:
    return Path(SSHD).exists() and shutil.which("ssh") is not None


def agent_command() -> list[str]:
    """How to run this checkout's agent on the (loopback) remote host."""
    script = Path(sys.executable).with_name("apsis-agent")
    return [str(script)] if script.exists() else [sys.executable, "-m", "apsis_agent"]


# sshd has no port file: it must be given a port number, and one from a bind to port 0
# can be taken by another process before sshd binds it. A start that finds its
# port in use is retried on another, this many times.
_ATTEMPTS = 5


def _free_port(address: str) -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


def _keygen(path: Path) -> str:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "apsis-test", "-f", str(path)],
        check=True,
    )
    return path.with_suffix(".pub").read_text().strip()


class Sshd:
    """One sshd process on one address and port."""

    def __init__(self, world: SshWorld, address: str) -> None:
        self.world = world
        self.address = address
        self.port = 0  # chosen by start()
        self.dir = world.root / f"sshd-{address}"
        self.dir.mkdir(exist_ok=True)
        self.config = self.dir / "sshd_config"
        self.log = self.dir / "sshd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_start = 0

    def _write_config(self) -> None:
        self.config.write_text(
            f"Port {self.port}\n"
            f"ListenAddress {self.address}\n"
            f"HostKey {self.world.host_key}\n"
            f"PidFile {self.dir / 'sshd.pid'}\n"
            f"AuthorizedKeysFile {self.world.authorized_keys}\n"
            "UsePAM no\n"
            "StrictModes no\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "PubkeyAuthentication yes\n"
            "PermitRootLogin prohibit-password\n"
            "PrintMotd no\n"
            "UseDNS no\n"
            "LogLevel VERBOSE\n"
        )

    def start(self) -> Sshd:
        """Start sshd on a free port of its address (another if that one is taken)."""
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation dir
        for _ in range(_ATTEMPTS):
            self.port = _free_port(self.address)
            self._write_config()
            self._log_start = self.log.stat().st_size if self.log.exists() else 0
            with open(self.log, "ab") as log:
                self.proc = subprocess.Popen(
                    [SSHD, "-D", "-e", "-f", str(self.config)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            outcome = wait_for(self._started, 10, f"sshd on {self.address}:{self.port}")
            if outcome == "listening":
                return self
        raise AssertionError(f"sshd found its port in use {_ATTEMPTS} times:\n{self._log()}")

    def _log(self) -> str:
        """What sshd logged since its last start."""
        with open(self.log, "rb") as log:
            log.seek(self._log_start)
            return log.read().decode(errors="replace")

    def _started(self) -> str | None:
        """Whether sshd is "listening", exited finding its port "in use", or None yet.

        Its own log line tells, not a connection: that could reach whoever took the port.
        """
        assert self.proc is not None
        text = self._log()
        if f"Server listening on {self.address} port {self.port}." in text:
            return "listening"
        if self.proc.poll() is None:
            return None
        if "Address already in use" in text:
            return "in use"
        raise AssertionError(f"sshd exited {self.proc.returncode}: {text}")

    def stop(self) -> None:
        """Stop the listener (sessions already open end with their commands)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


class SshWorld:
    """Keys, known hosts and client config for the sshds of one test."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.host_key = root / "host_ed25519"
        self.host_pub = _keygen(self.host_key)
        self.client_key = root / "client_ed25519"
        self.authorized_keys = root / "authorized_keys"
        self.authorized_keys.write_text(_keygen(self.client_key) + "\n")
        self.known_hosts = root / "known_hosts"
        self.ssh_config = root / "ssh_config"
        self.sshds: list[Sshd] = []
        self._write()

    def start(self, address: str = "127.0.0.1") -> Sshd:
        sshd = Sshd(self, address).start()
        self.sshds.append(sshd)
        self._write()
        return sshd

    def _write(self) -> None:
        """known_hosts with every sshd's key, and a Host block per address."""
        hosts = "".join(f"[{s.address}]:{s.port} {self.host_pub}\n" for s in self.sshds)
        self.known_hosts.write_text(hosts)
        blocks = "".join(f"Host {s.address}\n  Port {s.port}\n" for s in self.sshds)
        self.ssh_config.write_text(
            blocks + "Host *\n"
            f"  IdentityFile {self.client_key}\n"
            "  IdentitiesOnly yes\n"
            f"  UserKnownHostsFile {self.known_hosts}\n"
            "  GlobalKnownHostsFile /dev/null\n"
            "  BatchMode yes\n"
            "  StrictHostKeyChecking yes\n"
            "  ConnectTimeout 5\n"
        )

    def ssh_yaml(self) -> str:
        """The `agents.ssh` config that uses this world's client config."""
        return f"ssh: {{command: [ssh, -F, '{self.ssh_config}']}}\n"

    def stop(self) -> None:
        for sshd in self.sshds:
            with contextlib.suppress(Exception):
                sshd.stop()


def run_agent(db: Path, run_id: str) -> str | None:
    """The agent a run went to, as the server's database records it."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        row = conn.execute(
            "SELECT summary FROM runs WHERE run_number = ?", (int(run_id.lstrip("r")),)
        ).fetchone()
    return None if row is None else json.loads(row[0])["agent_id"]


def agent_pid(state_dir: Path) -> int | None:
    try:
        return int((state_dir / "daemon.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def kill_agent(state_dir: Path, procs: bool = True) -> int | None:
    """SIGKILL the agent daemon of `state_dir` (and, with `procs`, its programs)."""
    pid = agent_pid(state_dir)
    if pid is not None and pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not pid_alive(pid), 5, "the agent to die")
    if procs and (state_dir / "procs").is_dir():
        for pid_file in (state_dir / "procs").glob("*/pid"):
            with contextlib.suppress(OSError, ValueError, KeyError, ProcessLookupError):
                info = json.loads(pid_file.read_text())
                os.killpg(int(info["pgid"]), signal.SIGKILL)
                os.kill(int(info["shim_pid"]), signal.SIGKILL)
    return pid


def agents_yaml(
    world: SshWorld, states: dict[str, Path], remote: list[str] | None = None, extra: str = ""
) -> str:
    """An `agents:` section: fast heartbeats, this world's ssh, a state dir per host."""
    command = remote or agent_command()
    hosts = ", ".join(f"'{h}': {{state_dir: '{d}', bind: '{h}'}}" for h, d in states.items())
    return (
        "agents:\n"
        "  heartbeat: 0.5s\n"
        "  lost_timeout: 5s\n"
        f"  {world.ssh_yaml()}"
        f"  remote_command: {command}\n"
        "  bootstrap: {attempts: 2, delay: 0.2s, timeout: 20s}\n"
        f"  hosts: {{{hosts}}}\n"
        f"{extra}"
    )
