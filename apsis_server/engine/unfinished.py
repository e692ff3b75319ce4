"""The unfinished runs the engine holds in memory, by id and by job, with the job
definition each follows.

A run is bound to its job's definition as it leaves `scheduled`: its conditions
and actions are that definition's, whatever a reload does meanwhile. The binding
is kept in memory only: after a restart a run follows its job's current definition.
Finished runs live in the store, not here.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from apsis_common.states import State
from apsis_server.core.jobs import Job
from apsis_server.core.runs import Run

ACTIVE = (State.STARTING, State.RUNNING, State.STOPPING)


class Unfinished(Mapping[str, Run]):
    """Unfinished runs by id (a read-only mapping for everyone but the engine)."""

    def __init__(self) -> None:
        self._runs: dict[str, Run] = {}
        self._by_job: dict[str, set[str]] = {}
        self._bound: dict[str, Job] = {}

    def __getitem__(self, run_id: str) -> Run:
        return self._runs[run_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._runs)

    def __len__(self) -> int:
        return len(self._runs)

    def put(self, run: Run) -> None:
        """A run as it is now (unfinished)."""
        self._runs[run.run_id] = run
        self._by_job.setdefault(run.job_id, set()).add(run.run_id)

    def drop(self, run: Run) -> None:
        """A run that finished, or was withdrawn: no longer held."""
        self._runs.pop(run.run_id, None)
        same_job = self._by_job.get(run.job_id)
        if same_job is not None:
            same_job.discard(run.run_id)
            if not same_job:
                del self._by_job[run.job_id]

    def of_job(self, job_id: str) -> list[Run]:
        """The unfinished runs of a job."""
        return [self._runs[r] for r in self._by_job.get(job_id, ())]

    def bind(self, run_id: str, job: Job) -> None:
        """The definition a run follows from now on."""
        self._bound[run_id] = job

    def unbind(self, run_id: str) -> None:
        self._bound.pop(run_id, None)

    def job_of(self, run: Run, jobs: Mapping[str, Job]) -> Job | None:
        """The definition `run` follows: as bound, else its job's current one in
        `jobs`; None if its job is gone."""
        return self._bound.get(run.run_id) or jobs.get(run.job_id)

    def busy(self) -> dict[str, int]:
        """Starting, running and stopping runs per agent id."""
        busy: dict[str, int] = {}
        for run in self._runs.values():
            if run.agent_id and run.state in ACTIVE:
                busy[run.agent_id] = busy.get(run.agent_id, 0) + 1
        return busy
