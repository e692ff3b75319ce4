"""What the agents' tasks report, recorded: a `Reports` for tests of the registry's parts."""

from __future__ import annotations

from collections.abc import Mapping

from apsis_common import protocol as p
from apsis_server.agents.client import AgentClient


class RecordedReports:
    """Records every report; reconciling does nothing; no agent is busy."""

    def __init__(self) -> None:
        self.refusals: list[tuple[str, str]] = []
        self.acceptances: list[str] = []
        self.losses: list[str] = []

    def refused(self, proc_id: str, error: str) -> None:
        self.refusals.append((proc_id, error))

    def accepted(self, agent_id: str, results: list[p.StartResult]) -> None:
        self.acceptances += [r.proc_id for r in results]

    def lost(self, agent_id: str, silence: float) -> None:
        self.losses.append(agent_id)

    async def reconcile(self, agent_id: str, client: AgentClient) -> None:
        pass

    def busy(self) -> Mapping[str, int]:
        return {}
