"""Host group policies, config parsing of agents and groups, and ssh error messages."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from apsis_server.agents.groups import NoHost, pick
from apsis_server.agents.settings import HostGroup, SshSettings, parse_host_groups
from apsis_server.agents.ssh import explain, ssh_argv
from apsis_server.agents.targets import Target, parse_agent_id
from apsis_server.config import parse_config
from apsis_server.core.fields import Invalid

HOSTS = ("a", "b", "c")


def _group(policy: str) -> HostGroup:
    return HostGroup("g", policy, HOSTS)


def _sequence(policy: str, unusable: dict[str, str], busy: dict[str, int], n: int) -> list[str]:
    cursor, out, rng = 0, [], random.Random(1)
    for _ in range(n):
        chosen = pick(_group(policy), unusable, busy, cursor, rng)
        cursor = chosen.cursor
        out.append(chosen.host)
    return out


@pytest.mark.parametrize(
    ("policy", "unusable", "busy", "expected"),
    [
        ("round-robin", {}, {}, ["a", "b", "c", "a", "b"]),
        ("round-robin", {"b": "down"}, {}, ["a", "c", "a", "c", "a"]),
        ("first-available", {}, {}, ["a"] * 5),
        ("first-available", {"a": "down"}, {}, ["b"] * 5),
        ("least-busy", {}, {"a": 2, "b": 0, "c": 1}, ["b"] * 5),
        ("least-busy", {}, {}, ["a", "b", "c", "a", "b"]),
        ("least-busy", {"b": "down"}, {"a": 2, "b": 0, "c": 1}, ["c"] * 5),
    ],
)
def test_policies(
    policy: str, unusable: dict[str, str], busy: dict[str, int], expected: list[str]
) -> None:
    assert _sequence(policy, unusable, busy, 5) == expected


def test_random_uses_only_usable_hosts() -> None:
    seen = set(_sequence("random", {"c": "down"}, {}, 50))
    assert seen == {"a", "b"}


def test_skipped_members_are_noted() -> None:
    chosen = pick(_group("first-available"), {"a": "failed: refused"}, {}, 0, random.Random())
    assert chosen.host == "b"
    assert chosen.notes == ("host group g: skipped a: failed: refused",)


def test_no_usable_host() -> None:
    with pytest.raises(NoHost, match="no usable host in group g: a: x; b: y; c: z"):
        pick(_group("round-robin"), {"a": "x", "b": "y", "c": "z"}, {}, 0, random.Random())


def test_parse_host_groups() -> None:
    groups, aliases = parse_host_groups(
        {
            "workers": {"type": "least-busy", "hosts": ["w1", "w2"], "remote_command": "a b"},
            "db": "db7.example.com",
        }
    )
    assert groups["workers"].policy == "least-busy"
    assert groups["workers"].hosts == ("w1", "w2")
    assert groups["workers"].settings.remote_command == ("a", "b")
    assert aliases == {"db": "db7.example.com"}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"g": {"type": "fastest", "hosts": ["a"]}}, "host_groups.g.type: expected"),
        ({"g": {"hosts": []}}, "host_groups.g.hosts: a group needs at least one host"),
        ({"g": {"hosts": ["-oProxyCommand=x"]}}, "host_groups.g.hosts[0]: bad host name"),
        ({"g": {"hosts": ["a"], "colour": 1}}, "host_groups.g.colour: unknown key"),
        ({"g": 3}, "host_groups.g: expected a host name or a mapping"),
    ],
)
def test_bad_host_groups(value: object, message: str) -> None:
    with pytest.raises(Invalid, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_host_groups(value)


def test_agents_config(tmp_path: Path) -> None:
    config = parse_config(
        {
            "agents": {
                "ssh": {"command": "ssh -F cfg", "options": {"Port": 2222}},
                "remote_command": ["/venv/bin/apsis-agent"],
                "bootstrap": {"attempts": 5, "delay": "1s"},
                "hosts": {"h1": {"bind": "10.0.0.1", "state_dir": "/var/lib/a"}},
                "static": {
                    "s1": {"host": "s1.example.com", "port": 5007, "secret_file": "s1.secret"}
                },
            },
            "host_groups": {"g": {"hosts": ["h1", "h2"]}},
        },
        tmp_path,
    )
    agents = config.agents
    assert agents.ssh.command == ("ssh", "-F", "cfg")
    assert agents.ssh.options == {"Port": "2222"}
    assert agents.remote_command == ("/venv/bin/apsis-agent",)
    assert agents.attempts == 5 and agents.retry_delay == 1.0
    assert agents.hosts["h1"].bind == "10.0.0.1"
    assert agents.static["s1"].secret_file == tmp_path / "s1.secret"
    assert agents.static["s1"].key_id == "s1"
    assert agents.groups["g"].policy == "round-robin"


@pytest.mark.parametrize("port", [0, 65536, "5007", True])
def test_static_agent_port_is_a_port_number(tmp_path: Path, port: object) -> None:
    static = {"s1": {"host": "s1", "port": port, "secret_file": "s1.secret"}}
    with pytest.raises(Invalid, match=r"agents\.static\.s1\.port: expected a port number"):
        parse_config({"agents": {"static": static}}, tmp_path)


def test_unknown_agents_key(tmp_path: Path) -> None:
    with pytest.raises(Invalid, match=r"agents\.ssh\.colour: unknown key"):
        parse_config({"agents": {"ssh": {"colour": "red"}}}, tmp_path)


def test_ssh_argv_quotes_and_terminates_options() -> None:
    argv = ssh_argv(SshSettings(), "h", "u", ["/opt/my agent/bin", "bootstrap"])
    assert argv[:1] == ["ssh"]
    assert "BatchMode=yes" in argv and "StrictHostKeyChecking=yes" in argv
    assert argv[-5:] == ["-l", "u", "-T", "--", "h"] or argv[-4:-1] == ["-T", "--", "h"]
    assert argv[-1] == "'/opt/my agent/bin' bootstrap"
    relaxed = ssh_argv(SshSettings(strict_host_keys=False), "h", None, ["x"])
    assert "StrictHostKeyChecking=accept-new" in relaxed and "-l" not in relaxed


@pytest.mark.parametrize(
    ("code", "stderr", "start", "permanent"),
    [
        (255, "Host key verification failed.", "host key verification failed for h", True),
        (
            255,
            "No ED25519 host key is known for h and you have requested strict checking.\n"
            "Host key verification failed.",
            "unknown host key for h",
            True,
        ),
        (
            255,
            "@ WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! @\nHost key verification failed.",
            "host key mismatch for h: the host key changed",
            True,
        ),
        (255, "u@h: Permission denied (publickey).", "permission denied: ssh to u@h", True),
        (
            255,
            "ssh: connect to host h port 22: Connection refused",
            "ssh failed: ssh to u@h",
            False,
        ),
        (127, "bash: apsis-agent: command not found", "apsis-agent not found on h", True),
        (126, "", "apsis-agent on h cannot be run", True),
        (1, "", "agent bootstrap on u@h failed: boom", False),
    ],
)
def test_explain(code: int, stderr: str, start: str, permanent: bool) -> None:
    message, is_permanent = explain(code, stderr, "boom", "h", "u", "apsis-agent")
    assert message.startswith(start), message
    assert is_permanent == permanent


@pytest.mark.parametrize(
    ("agent_id", "target"),
    [
        ("local", Target("local", "127.0.0.1")),
        ("ssh:h.example.com", Target("ssh", "h.example.com")),
        ("ssh:bob@10.0.0.1", Target("ssh", "10.0.0.1", "bob")),
        ("sudo:bob", Target("sudo", "127.0.0.1", "bob")),
        ("static:x", None),
        ("ssh:-oProxyCommand=x", None),
    ],
)
def test_agent_ids(agent_id: str, target: Target | None) -> None:
    assert parse_agent_id(agent_id) == target
    if target is not None:
        assert target.agent_id == agent_id


@pytest.mark.parametrize(
    ("section", "after", "words"),
    [
        (None, None, []),
        ({"orphans": "keep"}, None, []),
        ({"orphans": "kill"}, 60.0, ["--kill-orphans-after", "60.0"]),
        ({"orphans": "kill", "after": "5 min"}, 300.0, ["--kill-orphans-after", "300.0"]),
    ],
)
def test_orphan_cleanup_reaches_every_bootstrapped_agent(
    tmp_path: Path, section: dict[str, str] | None, after: float | None, words: list[str]
) -> None:
    from apsis_server.agents.targets import bootstrap_argv

    agents = {} if section is None else {"cleanup": section}
    settings = parse_config({"agents": agents}, tmp_path).agents
    assert settings.kill_orphans_after == after
    for target in (Target("local", "127.0.0.1"), Target("ssh", "h1", "batch")):
        line = " ".join(bootstrap_argv(settings, target, str(tmp_path / "state")))
        assert ("--kill-orphans-after" in line) == bool(words)
        assert " ".join(words) in line  # ssh: within the remote command


@pytest.mark.parametrize(
    "section", [{"orphans": "stop"}, {"after": "soon", "orphans": "kill"}, {"when": 1}]
)
def test_bad_orphan_cleanup(tmp_path: Path, section: dict[str, str]) -> None:
    with pytest.raises(Invalid):
        parse_config({"agents": {"cleanup": section}}, tmp_path)
