"""The JSON shapes of runs, jobs and log entries in the API (docs/api.md)."""

from __future__ import annotations

import dataclasses
from typing import Any

from apsis_common.times import format_time
from apsis_server.agents.conn import AgentConn, view
from apsis_server.core.jobs import Job, next_times
from apsis_server.core.runs import LogEntry, Run
from apsis_server.web.markdown import description_html


def run_json(run: Run, now: float) -> dict[str, Any]:
    started = run.times.get("running")
    end = run.times.get(run.state.value) if run.state.finished else now
    return {
        "run_id": run.run_id,
        "job_id": run.job_id,
        "args": dict(run.args),
        "state": run.state.value,
        "schedule_time": format_time(run.schedule_time),
        "stop_time": format_time(run.stop_time),
        "times": {k: format_time(v) for k, v in run.times.items()},
        "message": run.message,
        "ad_hoc": run.ad_hoc,
        "rerun_of": run.rerun_of,
        "labels": list(run.labels),
        "elapsed": (end - started) if started is not None and end is not None else None,
    }


def upcoming(job: Job, now: float, count: int = 5) -> list[float]:
    """The next `count` schedule times of a job."""
    return [due.time for due in next_times(job, now, count)]


def job_json(job: Job, next_times: list[float]) -> dict[str, Any]:
    return {
        "job_id": job.job_id,
        "params": list(job.params),
        "program": job.program.to_plain(),
        "schedules": [
            {"type": type(s).__name__, "enabled": s.enabled, "text": s.text()}
            for s in job.schedules
        ],
        "conditions": [_plain(c) for c in job.conditions],
        "actions": [_plain(a) for a in job.actions],
        "metadata": _plain(dict(job.metadata)),
        # The only HTML the API hands out, and the only HTML the UI inserts as such.
        "description_html": description_html(job.description),
        "labels": list(job.labels),
        "next_times": [format_time(t) for t in next_times],
    }


def agent_json(conn: AgentConn, running: int) -> dict[str, Any]:
    """An agent as the API and the feeds show it."""
    return {**view(conn, running), "last_heartbeat": format_time(conn.last_heartbeat)}


def log_json(entry: LogEntry) -> dict[str, Any]:
    return {
        "time": format_time(entry.time),
        "state": entry.state.value if entry.state else None,
        "message": entry.message,
    }


def _plain(value: Any) -> Any:
    """Values safe for JSON (dataclasses and odd scalars become text or dicts)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: _plain(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)
