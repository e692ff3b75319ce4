"""The run value: one instance of a job, for one time and one set of args."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from apsis_common.states import State
from apsis_server.core.bound import BoundProgram


@dataclass(frozen=True)
class Run:
    """A run as the server knows it: a value. Only `lifecycle` makes one in a new state."""

    run_id: str
    job_id: str
    args: Mapping[str, str]
    state: State
    schedule_time: float | None = None
    times: Mapping[str, float] = field(default_factory=dict)
    message: str | None = None
    ad_hoc: bool = False
    rerun_of: str | None = None
    labels: tuple[str, ...] = ()
    # Identity of a scheduled run: (schedule key, schedule time) within the job.
    schedule_key: str | None = None
    stop_time: float | None = None
    # The bound program, once the run has left `scheduled`.
    program: BoundProgram | None = None
    # The process id the server chose, recorded before the agent is asked.
    proc_id: str | None = None
    agent_id: str | None = None
    attempt: int = 0
    # How many retries (by a retry action) came before this run.
    retry: int = 0


@dataclass(frozen=True)
class LogEntry:
    """One line of a run's log."""

    run_id: str
    time: float
    message: str
    state: State | None = None
    # The server that wrote it, with servers sharing a database (None: the only one).
    server: str | None = None


# What a run's args may hold (docs/jobs.md, "Args"): each value goes into a command
# line or a process's environment, so it is Unicode text without NUL, and all of
# them stay well within what exec takes (128 KiB an argument on Linux).
MAX_ARG_BYTES = 64 * 1024
MAX_ARGS_BYTES = 256 * 1024


def check_args(args: Mapping[str, str]) -> None:
    """ValueError, saying which arg and why, unless every name and value is text a
    process can be given, within the limits above."""
    total = 0
    for name, value in args.items():
        for what, text in (("name", name), ("value", value)):
            if not isinstance(text, str):
                raise ValueError(f"arg {name!r}: the {what} must be text")
            try:
                size = len(text.encode("utf-8"))
            except UnicodeEncodeError:
                raise ValueError(f"arg {name!r}: the {what} is not valid Unicode text") from None
            if "\0" in text:
                raise ValueError(f"arg {name!r}: the {what} holds a NUL character")
            total += size
        if len(value.encode()) > MAX_ARG_BYTES:
            raise ValueError(f"arg {name!r} is over {MAX_ARG_BYTES // 1024} KiB")
    if total > MAX_ARGS_BYTES:
        raise ValueError(f"args are over {MAX_ARGS_BYTES // 1024} KiB in all")


def run_number(run_id: str) -> int:
    """The integer in a run id (`r42` → 42)."""
    return int(run_id[1:])


# A run planned from a schedule is known by its job, schedule time and args: the
# (schedule time, args text) of one job is never planned twice.
Identity = tuple[float, str]


def args_key(args: Mapping[str, str]) -> str:
    """Args as text that is equal exactly when the args are (sorted-key JSON)."""
    return json.dumps(dict(args), sort_keys=True)
