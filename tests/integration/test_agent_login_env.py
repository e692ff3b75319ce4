"""Programs of another user's agent get that user's login environment (HOME, USER,
LOGNAME, SHELL, PATH), whatever the session that started the agent carried; the
job's own variables still win, and other agents' programs keep the agent's."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from apsis_agent.login import login_environment
from tests.agent_harness import Agent, Receiver, running_agent, sh
from tests.harness import wait_for

PRINT = 'printf "%s|%s|%s|%s|%s" "$HOME" "$USER" "$LOGNAME" "$SHELL" "$PATH"'
NAMES = ("HOME", "USER", "LOGNAME", "SHELL", "PATH")


@pytest.fixture
def agent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Agent, Receiver]]:
    # What a sudo or ssh session might hand the agent: another user's leftovers.
    monkeypatch.setenv("HOME", "/tmp/someone-else")
    monkeypatch.setenv("USER", "someone-else")
    monkeypatch.setenv("LOGNAME", "someone-else")
    monkeypatch.setenv("SHELL", "/bin/false")
    monkeypatch.setenv("PATH", f"/opt/session/bin:{Path('/usr/bin')}:/bin")
    with running_agent(tmp_path) as pair:
        yield pair


def _printed(agent: Agent, rx: Receiver, proc_id: str, **spec: object) -> list[str]:
    agent.start((proc_id, dataclasses.replace(sh(PRINT), **spec)))  # type: ignore[arg-type]
    wait_for(lambda: rx.exited(proc_id), 10, f"{proc_id} to exit")
    return rx.output(proc_id).decode().split("|")


def test_another_users_programs_get_a_login_environment(agent: tuple[Agent, Receiver]) -> None:
    a, rx = agent
    login = login_environment()
    assert _printed(a, rx, "login", login_env=True) == [login[n] for n in NAMES]
    assert login["PATH"] != "/opt/session/bin:/usr/bin:/bin"
    # It starts in the login's home (the session's does not exist).
    assert _printed(a, rx, "where", login_env=True, argv=("/bin/pwd",)) == [login["HOME"] + "\n"]
    # The job's variables win over the login's.
    mine = _printed(a, rx, "mine", login_env=True, env={"HOME": "/srv/job", "PATH": "/job/bin"})
    assert mine == ["/srv/job", login["USER"], login["LOGNAME"], login["SHELL"], "/job/bin"]
    # Without it (the server's own local agent), the agent's environment is kept.
    plain = _printed(a, rx, "plain", cwd="/")  # ~ is the session's, which is not there
    assert plain == [
        "/tmp/someone-else",
        "someone-else",
        "someone-else",
        "/bin/false",
        "/opt/session/bin:/usr/bin:/bin",
    ]
