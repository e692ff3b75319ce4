"""What the agents' tasks report, as they learn it, to whoever owns the runs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from apsis_common import protocol as p
from apsis_server.agents.client import AgentClient


class Reports(Protocol):
    """The runs' side of the agents: given to `Registry.run`, which hands it to each
    agent's dispatcher and keeper."""

    def refused(self, proc_id: str, error: str) -> None:
        """An agent refused a start, or the start can never reach one."""

    def accepted(self, agent_id: str, results: list[p.StartResult]) -> None:
        """An agent holds these starts now; those that had started carry their pid."""

    def lost(self, agent_id: str, silence: float) -> None:
        """An agent has been unreachable past the lost timeout."""

    async def reconcile(self, agent_id: str, client: AgentClient) -> None:
        """Compare the runs on a (re)connected agent with its processes."""

    def busy(self) -> Mapping[str, int]:
        """The running runs per agent id."""
