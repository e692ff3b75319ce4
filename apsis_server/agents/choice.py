"""Which agent runs a program: the registry's answer to the engine."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Choice:
    """The agent for a run, and notes for its run log (group members skipped)."""

    agent_id: str
    notes: tuple[str, ...] = ()
