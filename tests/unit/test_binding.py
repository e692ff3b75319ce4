"""A run's program is bound as it leaves `scheduled` (spec 01): a template that
fails errors the run at once, not after it has waited for its conditions, and a
reload while it waits does not change what it will run."""

from __future__ import annotations

from pathlib import Path

from apsis_common.states import State
from apsis_server.core.jobs import load_yaml, parse_job
from apsis_server.store.sqlite import SqliteStore
from tests.engine_kit import QuietAgents, new_engine
from tests.harness import run_async

WAITS = """
params: [day]
program: {type: program, argv: [echo, "{{ Date(day) + 1 }}"]}
condition: {type: dependency, job_id: other, args: {}}
"""
JOBS = {"waits": WAITS, "other": "program: {type: no-op}"}


def test_a_failing_template_errors_the_run_before_it_waits(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = SqliteStore(tmp_path / "apsis.db")
        engine = new_engine(store, JOBS, QuietAgents())
        run = engine.get(engine.schedule("waits", {"day": "garbage"}).run_id)
        assert run.state == State.ERROR
        messages = [e.message for e in store.log(run.run_id)]
        assert any("garbage" in m for m in messages), messages
        store.close()

    run_async(scenario)


def test_a_waiting_run_keeps_the_program_bound_when_it_left_scheduled(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = SqliteStore(tmp_path / "apsis.db")
        engine = new_engine(store, JOBS, QuietAgents())
        run = engine.get(engine.schedule("waits", {"day": "2026-11-27"}).run_id)
        assert run.state == State.WAITING
        assert run.program is not None and run.program["argv"] == ["echo", "2026-11-28"]
        changed = WAITS.replace("echo", "printf")
        engine.planning.replace_jobs(
            {**engine.jobs, "waits": parse_job("waits", load_yaml(changed), engine.templates)}
        )
        run = engine.get(run.run_id)
        assert run.state == State.WAITING and run.program is not None
        assert run.program["argv"] == ["echo", "2026-11-28"]
        store.close()

    run_async(scenario)
