"""Rules the test suite keeps so that it passes as a whole, not only file by file."""

from __future__ import annotations

from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_coroutines_run_in_a_thread_of_their_own() -> None:
    """The browser tests' driver (Playwright's sync API) keeps an event loop running
    on the main thread for the rest of the session: `asyncio.run` there fails, but
    only in the full suite (browser tests first). Tests use `tests.harness.run_async`."""
    needle = "asyncio" + ".run("
    offenders = sorted(
        str(path.relative_to(TESTS))
        for path in TESTS.rglob("*.py")
        if path.name != "harness.py" and needle in path.read_text()
    )
    assert offenders == []
