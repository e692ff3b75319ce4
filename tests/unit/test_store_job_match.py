"""Runs found by part of their job id, the same in every store (the runs page's job filter)."""

from __future__ import annotations

import pytest

from apsis_server.store.base import Changes, RunFilter, RunStore
from tests.unit.test_store_contract import _run, store  # noqa: F401 (the fixture)

JOBS = (
    "demo/sleep",
    "demo/Sleep then fail",
    "ops/nightly sleeper",
    "demo/hello",
    "demo2/x",
    "a%_b",
)


@pytest.fixture
def filled(store: RunStore) -> RunStore:  # noqa: F811 (the fixture, used)
    store.write(Changes(runs={f"r{n}": _run(n, job=job) for n, job in enumerate(JOBS, 1)}))
    return store


@pytest.mark.parametrize(
    ("text", "prefix", "expected"),
    [
        ("sleep", None, ["r3", "r2", "r1"]),  # anywhere, ignoring case
        ("SLEEP", None, ["r3", "r2", "r1"]),
        ("then f", None, ["r2"]),
        ("%", None, ["r6"]),  # no wildcards: a % is a %
        ("_", None, ["r6"]),
        ("nothing", None, []),
        (None, "demo/", ["r4", "r2", "r1"]),  # a folder: not demo2/
        (None, "demo", ["r5", "r4", "r2", "r1"]),
        (None, "Demo/", []),  # paths keep their case
        ("sleep", "demo/", ["r2", "r1"]),
    ],
)
def test_job_text_and_prefix(
    filled: RunStore, text: str | None, prefix: str | None, expected: list[str]
) -> None:
    found = filled.query(RunFilter(job_text=text, job_prefix=prefix))
    assert [r.run_id for r in found] == expected


def test_job_text_pages_with_the_cursor(filled: RunStore) -> None:
    first = filled.query(RunFilter(job_text="sleep", limit=2))
    assert [r.run_id for r in first] == ["r3", "r2"]
    rest = filled.query(RunFilter(job_text="sleep", limit=2, before=first[-1].run_id))
    assert [r.run_id for r in rest] == ["r1"]
