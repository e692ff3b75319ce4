"""Where an agent lives and how to start it: agent ids, bootstrap command lines, URLs.

| agent id        | the agent                                  | started by                  |
|-----------------|--------------------------------------------|-----------------------------|
| `local`         | the server's user on the server's host     | a child process             |
| `local:SERVER`  | the same, with servers sharing a database  | a child process of SERVER   |
| `sudo:USER`     | another user on the server's host          | `sudo -n -H -u USER`        |
| `ssh:HOST`      | the ssh default user on HOST               | `ssh HOST -- apsis-agent …` |
| `ssh:USER@HOST` | USER on HOST                               | `ssh -l USER HOST -- …`     |
| `static:NAME`   | a service configured under `agents.static` | not started: only reached   |

One agent per (host, user); a program runs only as its agent's user.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from apsis_common.names import check_host, check_user
from apsis_server.agents.settings import AgentSettings, HostSettings
from apsis_server.agents.ssh import ssh_argv

LOCAL = "local"


@dataclass(frozen=True)
class Target:
    """One agent's address: its kind, host and user."""

    kind: str  # local | sudo | ssh | static
    host: str
    user: str | None = None
    name: str = ""  # for static agents

    @property
    def agent_id(self) -> str:
        if self.kind == "local":
            return f"{LOCAL}:{self.name}" if self.name else LOCAL
        if self.kind == "sudo":
            return f"sudo:{self.user}"
        if self.kind == "static":
            return f"static:{self.name}"
        return f"ssh:{self.user}@{self.host}" if self.user else f"ssh:{self.host}"

    def url(self, port: int) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{port}"


def parse_agent_id(agent_id: str) -> Target | None:
    """The target an agent id names (None for static and unknown ids)."""
    kind, _, rest = agent_id.partition(":")
    try:
        if agent_id == LOCAL:
            return Target("local", "127.0.0.1")
        if kind == LOCAL:  # the local agent of the server named `rest`
            return Target("local", "127.0.0.1", name=rest)
        if kind == "sudo":
            return Target("sudo", "127.0.0.1", check_user(rest))
        if kind == "ssh":
            user, _, host = rest.rpartition("@")
            return Target("ssh", check_host(host), check_user(user) if user else None)
    except ValueError:
        return None
    return None


def host_settings(settings: AgentSettings, host: str) -> HostSettings:
    """Per-host settings, else those of the first group that has the host."""
    if host in settings.hosts:
        return settings.hosts[host]
    for group in settings.groups.values():
        if host in group.hosts:
            return group.settings
    return HostSettings()


def _daemon_options(settings: AgentSettings, bind: str, state_dir: str | None) -> list[str]:
    words = ["bootstrap", "--bind", bind, "--heartbeat", str(settings.heartbeat)]
    if state_dir is not None:
        words += ["--state-dir", state_dir]
    if settings.idle_stop is not None:
        words += ["--idle-stop", str(settings.idle_stop)]
    if settings.kill_orphans_after is not None:
        words += ["--kill-orphans-after", str(settings.kill_orphans_after)]
    return words


def bootstrap_argv(settings: AgentSettings, target: Target, local_state: str) -> list[str]:
    """The command line that runs `apsis-agent bootstrap` for `target`."""
    here = [sys.executable, "-m", "apsis_agent"]
    if target.kind == "local":
        return [*here, *_daemon_options(settings, "127.0.0.1", local_state)]
    if target.kind == "sudo":
        assert target.user is not None
        sudo = ["sudo", "-n", "-H", "-u", target.user, "--"]
        return [*sudo, *here, *_daemon_options(settings, "127.0.0.1", None)]
    overrides = host_settings(settings, target.host)
    remote = list(overrides.remote_command or settings.remote_command)
    remote += _daemon_options(settings, overrides.bind or settings.bind, overrides.state_dir)
    return ssh_argv(settings.ssh, target.host, target.user, remote)


def remote_command(settings: AgentSettings, host: str) -> str:
    """The configured remote command for `host`, for messages."""
    return " ".join(host_settings(settings, host).remote_command or settings.remote_command)
