"""What a `RunFilter` means, for stores that filter in Python, and the time a run is filed under."""

from __future__ import annotations

from apsis_server.core.runs import Run, run_number
from apsis_server.store.base import RunFilter


def matches(run: Run, f: RunFilter) -> bool:
    """Whether `run` passes every field of the filter."""
    t = run_time(run)
    return (
        (f.job_id is None or run.job_id == f.job_id)
        and (f.job_text is None or _ascii_lower(f.job_text) in _ascii_lower(run.job_id))
        and (f.job_prefix is None or run.job_id.startswith(f.job_prefix))
        and (not f.states or run.state in f.states)
        and (f.label is None or f.label in run.labels)
        and all(run.args.get(k) == v for k, v in f.args.items())
        and (f.since is None or t >= f.since)
        and (f.until is None or t < f.until)
        and (f.before is None or run_number(run.run_id) < run_number(f.before))
    )


def _ascii_lower(text: str) -> str:
    # As SQLite's lower() and LIKE: only A-Z change, so every store agrees.
    return text.translate(_ASCII_LOWER)


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def run_time(run: Run) -> float:
    """The time a run is filed under (for retention by age): its schedule time."""
    if run.schedule_time is not None:
        return run.schedule_time
    return min(run.times.values(), default=0.0)
