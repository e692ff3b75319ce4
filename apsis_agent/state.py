"""The agent's state directory: file names, the daemon lock, keys, settings and epoch.

Layout (directory mode 0700, every file 0600):

    lock            flock(2)ed by the running daemon; free means no daemon
    bootstrap.lock  serialises concurrent bootstraps
    daemon.pid      pid of the daemon holding `lock`
    port            the HTTPS port, written once the daemon listens
    bind            the address it listens on
    epoch           incremented at each daemon start
    leader_epoch    the newest leadership epoch of the servers seen (fence.py)
    keys.json       {"current": key id, "keys": {key id: secret hex}} (at most two)
    agent.json      {"agent_id", "webhook_url"}
    ca.pem          the server's CA: verifies the webhook endpoint
    agent.key       the agent's private key (made here, never sent)
    agent.pem       the agent's certificate, issued by the server's CA
    outbox.sqlite   unacknowledged events and what was reported per process
    agent.log       stdio of a daemon started by bootstrap
    procs/<id>/     one directory per process (see registry.py)
    spare/<n>/      empty directories for new processes (see spares.py)
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apsis_common.auth import Key
from apsis_common.errors import BadInput
from apsis_common.tls import write_private

# A previous key stays valid while the server rotates to a new one.
_MAX_KEYS = 2


def default_state_dir() -> Path:
    """`$XDG_STATE_HOME/apsis-agent`, else `~/.local/state/apsis-agent`."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "apsis-agent"


# ext2/3/4 inode flag (FS_TOPDIR_FL) and the ioctls that read and set it.
_TOPDIR = 0x00020000
_GETFLAGS, _SETFLAGS = 0x80086601, 0x40086602


def spread_subdirs(path: Path) -> bool:
    """Ask ext2/3/4 to spread `path`'s subdirectories over block groups (the
    Orlov allocator's top-directory rule); whether the flag is now set.

    Every run creates a process directory and a few files, and deletes them once
    reported. Without a journal, ext4 scans past every inode freed in the last
    half minute of the group it allocates in: with hundreds of runs a second in
    one group, that scan cost more CPU than the rest of the agent. Spread, each
    directory's files land in a group of their own. Elsewhere this does nothing.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        flags = array.array("i", [0, 0])
        fcntl.ioctl(fd, _GETFLAGS, flags, True)
        if not flags[0] & _TOPDIR:
            flags[0] |= _TOPDIR
            fcntl.ioctl(fd, _SETFLAGS, flags, True)
        return True
    except OSError:
        return False  # not ext2/3/4, or not allowed: nothing to gain
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Settings:
    """Who the agent is and where it reports, as given by the last bootstrap."""

    agent_id: str
    webhook_url: str
    ca_pem: str


@dataclass(frozen=True)
class Keys:
    """The secrets the agent accepts; `current` also signs its webhooks."""

    current: Key
    all: dict[str, bytes]


class StateDir:
    """Paths and small persistent values of one agent state directory."""

    def __init__(self, path: Path) -> None:
        self.path = path.absolute()
        self.procs = self.path / "procs"
        self.spare = self.path / "spare"
        self.lock_file = self.path / "lock"
        self.bootstrap_lock_file = self.path / "bootstrap.lock"
        self.pid_file = self.path / "daemon.pid"
        self.port_file = self.path / "port"
        self.bind_file = self.path / "bind"
        self.epoch_file = self.path / "epoch"
        self.keys_file = self.path / "keys.json"
        self.settings_file = self.path / "agent.json"
        self.ca_file = self.path / "ca.pem"
        self.key_file = self.path / "agent.key"
        self.cert_file = self.path / "agent.pem"
        self.outbox_file = self.path / "outbox.sqlite"
        self.log_file = self.path / "agent.log"

    def create(self) -> None:
        """Make the directory (0700) if missing; refuse one others can read."""
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.procs.mkdir(mode=0o700, exist_ok=True)
        spread_subdirs(self.procs)
        mode = self.path.stat().st_mode & 0o777
        if mode & 0o077:
            os.chmod(self.path, 0o700)

    # -- lock ------------------------------------------------------------------

    def try_lock(self, name: Path | None = None, blocking: bool = False) -> int | None:
        """An fd holding an exclusive flock on `name` (default: the daemon lock), or None."""
        fd = os.open(name or self.lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    def daemon_running(self) -> bool:
        """Whether a daemon holds the lock (probing it without keeping it)."""
        if not self.lock_file.exists():
            return False
        fd = self.try_lock()
        if fd is None:
            return True
        os.close(fd)
        return False

    # -- small values ------------------------------------------------------------

    def read_int(self, path: Path) -> int | None:
        try:
            return int(path.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def next_epoch(self) -> int:
        """Increment and persist the epoch (called by the daemon holding the lock)."""
        epoch = (self.read_int(self.epoch_file) or 0) + 1
        write_private(self.epoch_file, f"{epoch}\n")
        return epoch

    def write_port(self, port: int) -> None:
        write_private(self.port_file, f"{port}\n")

    def write_bind(self, host: str) -> None:
        write_private(self.bind_file, f"{host}\n")

    def local_address(self) -> tuple[str, int] | None:
        """Where a local client reaches the daemon: its bind address (loopback for any)."""
        port = self.read_int(self.port_file)
        if port is None:
            return None
        try:
            host = self.bind_file.read_text().strip()
        except FileNotFoundError:
            host = "127.0.0.1"
        if host in ("", "0.0.0.0"):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        return host, port

    def write_pid(self, pid: int) -> None:
        write_private(self.pid_file, f"{pid}\n")

    # -- keys and settings -------------------------------------------------------

    def load_keys(self) -> Keys:
        data = _read_json(self.keys_file)
        try:
            secrets = {str(k): bytes.fromhex(v) for k, v in data["keys"].items()}
            current = str(data["current"])
            return Keys(Key(current, secrets[current]), secrets)
        except (KeyError, ValueError, AttributeError, TypeError) as exc:
            raise BadInput(f"{self.keys_file}: malformed keys file") from exc

    def add_key(self, key: Key) -> None:
        """Make `key` current, keeping the previous current key valid too (rotation)."""
        try:
            old = self.load_keys()
            keep = {old.current.key_id: old.current.secret}
        except (FileNotFoundError, BadInput):
            keep = {}
        keep.pop(key.key_id, None)
        keys = {key.key_id: key.secret.hex()} | {k: v.hex() for k, v in keep.items()}
        keys = dict(list(keys.items())[:_MAX_KEYS])
        write_private(self.keys_file, json.dumps({"current": key.key_id, "keys": keys}))

    def load_settings(self) -> Settings:
        data = _read_json(self.settings_file)
        try:
            return Settings(
                str(data["agent_id"]), str(data["webhook_url"]), self.ca_file.read_text()
            )
        except (KeyError, TypeError) as exc:
            raise BadInput(f"{self.settings_file}: malformed settings") from exc

    def save_settings(self, agent_id: str, webhook_url: str, ca_pem: str) -> None:
        write_private(self.ca_file, ca_pem)
        write_private(
            self.settings_file, json.dumps({"agent_id": agent_id, "webhook_url": webhook_url})
        )

    def remove(self, path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BadInput(f"{path}: not JSON") from exc
