"""An engine on a real SQLite store, with agents that start nothing: for unit tests
of what the engine, and what drives it, do with runs."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from apsis_common import protocol as p
from apsis_server.agents.choice import Choice
from apsis_server.agents.dispatch import Command
from apsis_server.core.jobs import load_yaml, parse_job
from apsis_server.core.templates import Templates
from apsis_server.engine.engine import Engine
from apsis_server.engine.ports import Settings
from apsis_server.store.sqlite import SqliteStore


class QuietAgents:
    """Every run goes to the local agent; the starts handed out are only recorded.
    Output is read from `files` (proc id → its stdout), each read recorded."""

    def __init__(self) -> None:
        self.starts: list[p.StartProc] = []
        self.files: dict[str, bytes] = {}
        self.reads: list[tuple[int, int]] = []

    def choose(
        self, host: str | None, user: str | None, busy: Callable[[], Mapping[str, int]]
    ) -> Choice:
        return Choice("local")

    def start(self, agent_id: str, proc: p.StartProc) -> None:
        self.starts.append(proc)

    def command(self, agent_id: str, command: Command) -> None:
        pass

    def withdraw(self, agent_id: str, proc_id: str) -> None:
        self.starts = [s for s in self.starts if s.proc_id != proc_id]

    async def output(
        self, agent_id: str, proc_id: str, start: int, stop: int, fd: int = 1
    ) -> bytes:
        self.reads.append((start, stop))
        return self.files.get(proc_id, b"")[start:stop]


def new_engine(
    store: SqliteStore, jobs: dict[str, str], agents: QuietAgents, settings: Settings | None = None
) -> Engine:
    """An engine with `jobs` (job id → YAML text) loaded."""
    templates = Templates()
    engine = Engine(store, agents, templates, settings)
    engine.set_jobs(
        {job_id: parse_job(job_id, load_yaml(text), templates) for job_id, text in jobs.items()},
        templates,
    )
    return engine
