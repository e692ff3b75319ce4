"""What the engine needs from outside: the agents (a port the registry fills), and
its settings from the configuration."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from apsis_common import protocol as p
from apsis_server.actions.mail import SmtpSettings
from apsis_server.agents.choice import Choice
from apsis_server.agents.dispatch import Command
from apsis_server.core.bound import DEFAULT_OUTPUT_MAX
from apsis_server.core.planner import Horizon
from apsis_server.store.base import Changes

Listener = Callable[[Changes], None]


class Agents(Protocol):
    """What the engine needs of the agent registry."""

    def choose(
        self, host: str | None, user: str | None, busy: Callable[[], Mapping[str, int]]
    ) -> Choice:
        """The agent to run on `host` as `user`, with notes for the run log;
        LookupError or ValueError (saying why) if there is none."""

    def start(self, agent_id: str, proc: p.StartProc) -> None: ...

    def command(self, agent_id: str, command: Command) -> None: ...

    def withdraw(self, agent_id: str, proc_id: str) -> None:
        """Drop a start not yet sent: its run ended first."""

    async def output(
        self, agent_id: str, proc_id: str, start: int, stop: int, fd: int = 1
    ) -> bytes: ...


@dataclass(frozen=True)
class Settings:
    """What the configuration says about running runs."""

    horizon: Horizon = field(default_factory=Horizon)
    # Default limit on time spent waiting for conditions (None: no limit).
    waiting_max_time: float | None = None
    # Output kept per run: the head and the tail, each half of this.
    output_max: int = DEFAULT_OUTPUT_MAX
    # Where email actions go (none: they are skipped), and the web UI's address.
    smtp: SmtpSettings | None = None
    public_url: str | None = None
    # This server's name in run logs, with servers sharing a database.
    server: str | None = None
