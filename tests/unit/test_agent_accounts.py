"""One agent per (host, account): ssh's default user, named or not, is one agent."""

from __future__ import annotations

import getpass
from pathlib import Path

from apsis_common.tls import new_ca
from apsis_server.agents.registry import Registry
from apsis_server.agents.settings import AgentSettings


def test_the_default_ssh_user_named_or_not_is_one_agent(tmp_path: Path) -> None:
    registry = Registry(
        tmp_path, new_ca(), lambda: "http://127.0.0.1:1/x", AgentSettings(), epoch=lambda: None
    )
    me = getpass.getuser()
    plain = registry.choose("h1.example.com", None, dict).agent_id
    named = registry.choose("h1.example.com", me, dict).agent_id
    assert plain == named == "ssh:h1.example.com"
    other = "nobody" if me != "nobody" else "daemon"
    assert registry.choose("h1.example.com", other, dict).agent_id == f"ssh:{other}@h1.example.com"


def test_servers_sharing_a_database_each_have_their_own_local_agent(tmp_path: Path) -> None:
    """`local:NAME` for server NAME; another server's local agent is known (its runs are
    accounted for) but never connected: it is on that server's host."""
    registry = Registry(
        tmp_path,
        new_ca(),
        lambda: "http://127.0.0.1:1/x",
        AgentSettings(),
        epoch=lambda: None,
        local_name="a",
    )
    assert registry.choose(None, None, dict).agent_id == "local:a"
    registry.adopt({"local:b"})
    assert set(registry.agents) >= {"local:a", "local:b"}
    solo = Registry(
        tmp_path / "solo",
        new_ca(),
        lambda: "http://127.0.0.1:1/x",
        AgentSettings(),
        epoch=lambda: None,
    )
    assert solo.choose(None, None, dict).agent_id == "local"
