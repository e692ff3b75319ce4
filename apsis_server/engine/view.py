"""What may be read of the engine: the unfinished runs from memory, the rest from
the store, the jobs in use. The API, the feeds and metrics read the engine through
this; only the engine itself (`engine.py`) changes anything.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from apsis_common.errors import NotFound
from apsis_server.core.jobs import Job
from apsis_server.core.runs import Run
from apsis_server.core.templates import Templates
from apsis_server.engine.journal import Journal
from apsis_server.engine.procs import ProcTable
from apsis_server.engine.unfinished import Unfinished
from apsis_server.store.base import RunFilter, RunStore


class EngineView:
    """The engine's state, read-only: what readers may see."""

    def __init__(self, store: RunStore, templates: Templates, clock: Callable[[], float]) -> None:
        self.store = store
        self.clock = clock
        self._templates = templates
        self._jobs: dict[str, Job] = {}
        self._runs = Unfinished()
        self._journal = Journal(store, clock)
        self.procs = ProcTable()

    @property
    def runs(self) -> Mapping[str, Run]:
        """The unfinished runs, by id."""
        return self._runs

    @property
    def jobs(self) -> Mapping[str, Job]:
        """The job definitions in use, by id."""
        return self._jobs

    @property
    def templates(self) -> Templates:
        return self._templates

    def job(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def job_ids(self) -> list[str]:
        return list(self._jobs)

    def job_of(self, run: Run) -> Job | None:
        """The definition `run` follows: as bound when it left `scheduled`, else the
        job's current one; None if its job is gone."""
        return self._runs.job_of(run, self._jobs)

    def unfinished_of(self, job_id: str) -> list[Run]:
        """The unfinished runs of a job."""
        return self._runs.of_job(job_id)

    @property
    def store_error(self) -> str | None:
        """Why the last write to the store failed, until one succeeds."""
        return self._journal.store_error

    def is_unfinished(self, run_id: str) -> bool:
        return run_id in self._runs

    def query(self, run_filter: RunFilter) -> list[Run]:
        return self.store.query(run_filter)

    def stored_meta(self, run_id: str) -> dict[str, Any]:
        return self.store.meta(run_id)

    def expand(self, text: str, scope: Mapping[str, Any]) -> str:
        """A template expanded with the templates in use; TemplateError on failure."""
        return self._templates.expand(text, scope)

    def get(self, run_id: str) -> Run:
        """The run as it is now: unfinished, finished but not yet written (the store
        still has its previous state), or from the store; NotFound if there is none."""
        run = self._runs.get(run_id) or self._journal.changes.runs.get(run_id)
        run = run or self.store.get(run_id)
        if run is None:
            raise NotFound(f"no run {run_id!r}")
        return run

    def run_for(self, proc_id: str) -> Run | None:
        """The unfinished run that owns a proc id."""
        run_id = self.procs.run_for(proc_id)
        return self._runs.get(run_id) if run_id is not None else None

    def busy(self) -> Mapping[str, int]:
        """Starting, running and stopping runs per agent id (for least-busy groups)."""
        return self._runs.busy()
