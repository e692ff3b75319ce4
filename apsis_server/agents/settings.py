"""What the config says about agents: the `agents:` and `host_groups:` sections.

```yaml
agents:
  local: {enabled: true}
  lost_timeout: 10 min
  heartbeat: 5s
  ssh: {command: ssh, options: {ConnectTimeout: "10"}, strict_host_keys: true}
  remote_command: apsis-agent          # a string (shell words) or a list of words
  bind: 0.0.0.0                        # what remote agents listen on
  bootstrap: {attempts: 3, delay: 2s, timeout: 60s}
  idle_stop: 15 min
  cleanup: {orphans: kill, after: 1 min}   # default off: processes a run leaves may run on
  upgrade: true                        # drain and replace agents of another version
  hosts:                               # per-host overrides
    db7.example.com: {remote_command: /opt/apsis/bin/apsis-agent, bind: 10.1.2.7,
                      state_dir: /var/lib/apsis-agent}
  static:                              # agents run as services, not bootstrapped
    batch1: {host: batch1.example.com, port: 5007, user: batch,
             key_id: batch1, secret_file: /etc/apsis/batch1.secret, ca_file: null}
host_groups:
  workers: {type: round-robin, hosts: [w1, w2], remote_command: ...}
  db: db7.example.com                  # an alias
```
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apsis_common.names import check_host, check_user
from apsis_server.core.fields import (
    FieldError,
    Fields,
    Invalid,
    boolean,
    choice,
    duration,
    port_number,
    positive_duration,
    positive_integer,
    string,
    string_map,
    strings,
)

POLICIES = ("round-robin", "random", "first-available", "least-busy")


@dataclass(frozen=True)
class SshSettings:
    """How to run the OpenSSH client."""

    command: tuple[str, ...] = ("ssh",)
    options: Mapping[str, str] = field(default_factory=dict)
    strict_host_keys: bool = True
    connect_timeout: float = 10.0


@dataclass(frozen=True)
class HostSettings:
    """Per-host (or per-group) overrides for bootstrapping its agents."""

    remote_command: tuple[str, ...] | None = None
    bind: str | None = None
    state_dir: str | None = None


@dataclass(frozen=True)
class StaticAgent:
    """An agent run as a service (`apsis-agent serve`), reached at a fixed port."""

    name: str
    host: str
    port: int
    user: str | None
    key_id: str
    secret_file: Path
    ca_file: Path | None = None  # None: the server's own CA issued the agent's certificate


@dataclass(frozen=True)
class HostGroup:
    """Hosts that share work: one is picked per run, by `policy`."""

    name: str
    policy: str
    hosts: tuple[str, ...]
    settings: HostSettings = HostSettings()


@dataclass(frozen=True)
class AgentSettings:
    """Everything the registry needs from the config."""

    local_enabled: bool = True
    lost_timeout: float = 600.0
    heartbeat: float = 5.0
    ssh: SshSettings = SshSettings()
    remote_command: tuple[str, ...] = ("apsis-agent",)
    bind: str = "0.0.0.0"
    attempts: int = 3
    retry_delay: float = 2.0
    bootstrap_timeout: float = 60.0
    idle_stop: float | None = None
    # SIGKILL processes a run left behind so long after its program ended (cgroups).
    kill_orphans_after: float | None = None
    upgrade: bool = True
    hosts: Mapping[str, HostSettings] = field(default_factory=dict)
    static: Mapping[str, StaticAgent] = field(default_factory=dict)
    groups: Mapping[str, HostGroup] = field(default_factory=dict)
    aliases: Mapping[str, str] = field(default_factory=dict)


def _words(value: Any, path: str) -> tuple[str, ...]:
    """A command: a list of words, or a string split like a shell would."""
    if isinstance(value, str):
        try:
            words = tuple(shlex.split(value))
        except ValueError as exc:
            raise Invalid([FieldError(path, str(exc))]) from None
    else:
        words = strings(value, path)
    if not words:
        raise Invalid([FieldError(path, "expected a command, got nothing")])
    return words


def _host_settings(value: Any, path: str) -> HostSettings:
    f = Fields(value or {}, path)
    settings = HostSettings(
        remote_command=f.take("remote_command", _words, None),
        bind=f.take("bind", string, None),
        state_dir=f.take("state_dir", string, None),
    )
    f.done()
    return settings


def _checked(check: Any) -> Any:
    def convert(value: Any, path: str) -> str:
        try:
            return str(check(string(value, path)))
        except ValueError as exc:
            raise Invalid([FieldError(path, str(exc))]) from None

    return convert


def _ssh(value: Any, path: str) -> SshSettings:
    f = Fields(value or {}, path)
    ssh = SshSettings(
        command=f.take("command", _words, ("ssh",)),
        options=f.take("options", string_map, {}),
        strict_host_keys=f.take("strict_host_keys", boolean, True),
        connect_timeout=f.take("connect_timeout", positive_duration, 10.0),
    )
    f.done()
    return ssh


def _static(name: str, value: Any, path: str, base: Path) -> StaticAgent:
    f = Fields(value, path)
    ca = f.take("ca_file", lambda v, p: None if v is None else base / string(v, p), None)
    agent = StaticAgent(
        name=name,
        host=f.need("host", _checked(check_host)),
        port=f.need("port", port_number),
        user=f.take("user", _checked(check_user), None),
        key_id=f.take("key_id", string, name),
        secret_file=base / f.need("secret_file", string),
        ca_file=ca,
    )
    f.done()
    return agent


def _cleanup(value: Any, path: str) -> float | None:
    """`{orphans: kill, after: 1 min}` (or `orphans: keep`, the default): seconds after
    a program ended to kill what its run left behind, or None."""
    f = Fields(value, path, "a mapping like {orphans: kill, after: 1 min}")
    policy = f.take("orphans", choice("keep", "kill"), "keep")
    after = f.take("after", duration, 60.0)
    f.done()
    return after if policy == "kill" else None


def parse_agents(f: Fields, base: Path) -> AgentSettings:
    """The `agents:` section (every key taken from `f`, which the caller closes)."""
    local = Fields(f.raw("local") or {}, f.at("local"))
    local_enabled = local.take("enabled", boolean, True)
    local.done()
    boot = Fields(f.raw("bootstrap") or {}, f.at("bootstrap"))
    attempts = boot.take("attempts", positive_integer, 3)
    retry_delay = boot.take("delay", duration, 2.0)
    timeout = boot.take("timeout", positive_duration, 60.0)
    boot.done()
    hosts = Fields(f.raw("hosts") or {}, f.at("hosts"))
    static = Fields(f.raw("static") or {}, f.at("static"))
    idle = f.take("idle_stop", lambda v, p: None if v is None else positive_duration(v, p), None)
    return AgentSettings(
        local_enabled=local_enabled,
        lost_timeout=f.take("lost_timeout", duration, 600.0),
        heartbeat=f.take("heartbeat", positive_duration, 5.0),
        ssh=f.take("ssh", _ssh, SshSettings()),
        remote_command=f.take("remote_command", _words, ("apsis-agent",)),
        bind=f.take("bind", string, "0.0.0.0"),
        attempts=attempts,
        retry_delay=retry_delay,
        bootstrap_timeout=timeout,
        idle_stop=idle,
        kill_orphans_after=f.take("cleanup", _cleanup, None),
        upgrade=f.take("upgrade", boolean, True),
        hosts={
            _checked(check_host)(k, hosts.at(str(k))): _host_settings(v, hosts.at(str(k)))
            for k, v in hosts.data.items()
        },
        static={
            str(k): _static(str(k), v, static.at(str(k)), base) for k, v in static.data.items()
        },
    )


def parse_host_groups(
    value: Any, path: str = "host_groups"
) -> tuple[dict[str, HostGroup], dict[str, str]]:
    """Groups and aliases from `host_groups:` (an alias is a plain host name)."""
    f = Fields(value or {}, path)
    groups: dict[str, HostGroup] = {}
    aliases: dict[str, str] = {}
    for name, item in f.data.items():
        where = f.at(str(name))
        if isinstance(item, str):
            aliases[str(name)] = _checked(check_host)(item, where)
            continue
        g = Fields(item, where, "a host name or a mapping with type and hosts")
        policy = g.take("type", choice(*POLICIES), "round-robin")
        hosts = g.need("hosts", strings)
        for i, host in enumerate(hosts):
            _checked(check_host)(host, f"{g.at('hosts')}[{i}]")
        if not hosts:
            raise Invalid([FieldError(g.at("hosts"), "a group needs at least one host")])
        settings = HostSettings(
            remote_command=g.take("remote_command", _words, None),
            bind=g.take("bind", string, None),
            state_dir=g.take("state_dir", string, None),
        )
        g.done()
        groups[str(name)] = HostGroup(str(name), policy, hosts, settings)
    return groups, aliases
