"""A run's program is bound as it leaves `scheduled` (spec 01): a template that
fails errors the run at once, not after it has waited for its conditions, and a
reload while it waits does not change what it will run."""

from __future__ import annotations

from pathlib import Path

from apsis_common.states import State
from apsis_server.core import lifecycle
from apsis_server.core.bound import BoundProcess
from apsis_server.core.catchup import CatchUp
from apsis_server.core.jobs import load_yaml, parse_job
from apsis_server.core.runs import Run
from apsis_server.engine.engine import Engine
from apsis_server.engine.restore import restore
from apsis_server.store.sqlite import SqliteStore
from tests.engine_kit import QuietAgents, new_engine
from tests.harness import run_async

WAITS = """
params: [day]
program: {type: program, argv: [echo, "{{ Date(day) + 1 }}"]}
condition: {type: dependency, job_id: other, args: {}}
"""
JOBS = {"waits": WAITS, "other": "program: {type: no-op}"}


def _scheduled(tmp_path: Path, day: str) -> tuple[SqliteStore, Engine, Run]:
    """A store, an engine with JOBS, and a run of `waits` scheduled for `day` now
    (call within the event loop)."""
    store = SqliteStore(tmp_path / "apsis.db")
    engine = new_engine(store, JOBS, QuietAgents())
    return store, engine, engine.get(engine.schedule("waits", {"day": day}).run_id)


def test_a_failing_template_errors_the_run_before_it_waits(tmp_path: Path) -> None:
    async def scenario() -> None:
        store, _, run = _scheduled(tmp_path, "garbage")
        assert run.state == State.ERROR
        messages = [e.message for e in store.log(run.run_id)]
        assert any("garbage" in m for m in messages), messages
        store.close()

    run_async(scenario)


def test_a_waiting_run_keeps_the_program_bound_when_it_left_scheduled(tmp_path: Path) -> None:
    async def scenario() -> None:
        store, engine, run = _scheduled(tmp_path, "2026-11-27")
        assert run.state == State.WAITING
        assert isinstance(run.program, BoundProcess)
        assert run.program.argv == ("echo", "2026-11-28")
        changed = WAITS.replace("echo", "printf")
        engine.replace_jobs(
            {**engine.jobs, "waits": parse_job("waits", load_yaml(changed), engine.templates)},
            engine.templates,
        )
        run = engine.get(run.run_id)
        assert run.state == State.WAITING and isinstance(run.program, BoundProcess)
        assert run.program.argv == ("echo", "2026-11-28")
        store.close()

    run_async(scenario)


def test_a_waiting_run_keeps_its_conditions_when_its_job_goes(tmp_path: Path) -> None:
    """Removed by a reload while the run waits: its dependency still holds it (a
    failed run of the other job does not release it), and it starts, with its
    bound program, once the dependency is met."""

    async def scenario() -> None:
        store = SqliteStore(tmp_path / "apsis.db")
        agents = QuietAgents()
        engine = new_engine(store, JOBS, agents)
        waiting = engine.schedule("waits", {"day": "2026-11-27"}).run_id
        engine.replace_jobs({"other": engine.jobs["other"]}, engine.templates)  # "waits" removed
        assert engine.get(waiting).state == State.WAITING
        for outcome in (State.FAILURE, State.SUCCESS):
            other = engine.schedule("other", {})
            ended = lifecycle.Succeeded if outcome == State.SUCCESS else lifecycle.Failed
            engine.apply(engine.get(other.run_id), ended("done"))
            engine.commit()
            if outcome == State.FAILURE:  # not what it waits for: it still waits
                assert engine.get(waiting).state == State.WAITING
        assert engine.get(waiting).state == State.STARTING
        assert agents.starts[-1].spec.argv == ("echo", "2026-11-28")
        store.close()

    run_async(scenario)


def test_after_a_restart_a_waiting_run_of_a_job_gone_errors(tmp_path: Path) -> None:
    """No binding outlives the server: a waiting run whose job is gone at restart
    errors, rather than start without its conditions."""

    async def scenario() -> None:
        store = SqliteStore(tmp_path / "apsis.db")
        engine = new_engine(store, JOBS, QuietAgents())
        waiting = engine.schedule("waits", {"day": "2026-11-27"}).run_id
        store.close()
        store = SqliteStore(tmp_path / "apsis.db")
        engine = new_engine(store, {"other": JOBS["other"]}, QuietAgents())
        restore(engine, CatchUp())
        run = engine.get(waiting)
        assert run.state == State.ERROR and run.message == "job waits no longer exists"
        store.close()

    run_async(scenario)
