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
