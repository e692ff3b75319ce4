"""Jobs: parsing and validating one job file into an immutable `Job`.

Every part of the file is parsed even after an error, so one load reports all of
a file's errors together, each with its key path.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from apsis_server.core.actions import Action, parse_action, parse_successor
from apsis_server.core.calendars import Calendar
from apsis_server.core.catchup import CatchUp, parse_catch_up, parse_waiting
from apsis_server.core.conditions import Condition, parse_condition
from apsis_server.core.extensions import Extensions
from apsis_server.core.fields import (
    Collector,
    FieldError,
    Fields,
    Invalid,
    boolean,
    items,
    string,
    strings,
)
from apsis_server.core.programs import Program, parse_program
from apsis_server.core.runs import check_args
from apsis_server.core.schedules import (
    Due,
    Schedule,
    ScheduleContext,
    parse_schedule,
    supplied_args,
)
from apsis_server.core.templates import Templates, check_template
from apsis_server.core.yamlfile import load_yaml as load_yaml  # job files are read with it

# The job id of ad-hoc runs of a program given directly (no conditions, no actions).
ADHOC_JOB = "adhoc"

_NOT_GIVEN: Any = object()


@dataclass(frozen=True)
class Job:
    """A job as loaded: what to run, when, under which conditions, and after.

    `catch_up` None means the server's default policy; `waiting_max_time` is the
    longest a run may wait (None: no limit), used only when `has_waiting_limit`,
    else the server's default applies.
    """

    job_id: str
    params: tuple[str, ...]
    program: Program
    schedules: tuple[Schedule, ...] = ()
    metadata: Mapping[str, Any] = field(default_factory=dict)
    labels: tuple[str, ...] = ()
    conditions: tuple[Condition, ...] = ()
    actions: tuple[Action, ...] = ()
    ad_hoc: bool = False
    catch_up: CatchUp | None = None
    waiting_max_time: float | None = None
    has_waiting_limit: bool = False

    @property
    def description(self) -> str:
        return str(self.metadata.get("description", ""))


@dataclass(frozen=True)
class JobError:
    """Why a job file did not load."""

    job_id: str
    path: str
    key_path: str
    message: str


def _params(value: Any, path: str) -> tuple[str, ...]:
    """A list of names; or, as the earlier Apsis also took, a mapping whose keys are
    the names (their values, that scheduler's param types, are not used here)."""
    if isinstance(value, Mapping):
        value = list(value)
    params = strings(value, path)
    for i, p in enumerate(params):
        if not p.isidentifier():
            raise Invalid([FieldError(f"{path}[{i}]", f"param {p!r} is not a valid name")])
    if len(set(params)) != len(params):
        raise Invalid([FieldError(path, "duplicate param names")])
    return params


def _metadata(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise Invalid([FieldError(path, "expected a mapping")])
    if "description" in value:
        string(value["description"], f"{path}.description")
    return dict(value)


def _list(
    f: Fields, c: Collector, keys: tuple[str, str], parse: Callable[[Any, str], Any]
) -> tuple[Any, ...]:
    """The entries under `condition` or `conditions` (one mapping or a list)."""
    one, many = keys
    if f.has(one) and f.has(many):
        c.errors.append(FieldError(many, f"give {one!r} or {many!r}, not both"))
    f.allow(one, many)  # with both given, the error above is enough
    key = one if f.has(one) else many
    value = f.raw(key)
    return tuple(c(partial(parse, v, p), None) for v, p in items(value or [], key))


def parse_job(
    job_id: str,
    data: Any,
    templates: Templates,
    *,
    calendars: Mapping[str, Calendar] | None = None,
    extensions: Extensions | None = None,
) -> Job:
    """A job from its parsed YAML; `Invalid` with every error found.

    `calendars` are the named calendars of the calendar directory, by name;
    `extensions` the program, schedule, condition and action types (default: the
    built-in ones).
    """
    ext = extensions or Extensions()
    f = Fields(data, "", "a mapping of job keys")
    c = Collector()
    none: tuple[str, ...] = ()
    params = c(lambda: f.take("params", _params, none), none)
    ctx = ScheduleContext(job_id, params, templates, dict(calendars or {}), ext.schedules)
    schedules = [
        (p, c(partial(parse_schedule, v, p, ctx), None))
        for v, p in items(f.raw("schedule") or [], "schedule")
    ]
    program = c(lambda: f.need("program", partial(parse_program, registry=ext.programs)), None)
    no_metadata: dict[str, Any] = {}
    metadata = c(lambda: f.take("metadata", _metadata, no_metadata), no_metadata)
    labels = c(lambda: f.take("labels", strings, none), none)
    labels += c(lambda: strings(metadata.get("labels", []), "metadata.labels"), none)
    conditions = _list(
        f, c, ("condition", "conditions"), partial(parse_condition, registry=ext.conditions)
    )
    actions = _list(f, c, ("action", "actions"), partial(parse_action, registry=ext.actions))
    actions += tuple(
        c(partial(parse_successor, v, p), None)
        for v, p in items(f.raw("successors") or [], "successors")
    )
    given_id = c(lambda: f.take("job_id", string, job_id), job_id)
    if given_id != job_id:
        c.errors.append(
            FieldError("job_id", f"job_id {given_id!r} does not match the path {job_id!r}")
        )
    if job_id == ADHOC_JOB:
        message = f"the job id {ADHOC_JOB!r} is kept for ad-hoc runs of programs; rename the file"
        c.errors.append(FieldError("", message))
    waiting = c(lambda: f.take("waiting", parse_waiting, _NOT_GIVEN), _NOT_GIVEN)
    job = Job(
        job_id=job_id,
        params=params,
        # A stand-in when the program is bad, so the rest can still be checked.
        program=program or Program(type="no-op"),
        schedules=tuple(s for _, s in schedules if s is not None),
        metadata=metadata,
        labels=tuple(dict.fromkeys(labels)),
        conditions=tuple(x for x in conditions if x is not None),
        actions=tuple(x for x in actions if x is not None),
        ad_hoc=c(lambda: f.take("ad_hoc", boolean, False), False),
        catch_up=c(lambda: f.take("catch_up", parse_catch_up, None), None),
        waiting_max_time=None if waiting is _NOT_GIVEN else waiting,
        has_waiting_limit=waiting is not _NOT_GIVEN,
    )
    c(f.done, None)
    if program is not None:
        c.errors.extend(_check_templates(job, templates))
    c.errors.extend(_check_schedule_args(job.params, schedules))
    c.check()
    return job


def _check_templates(job: Job, templates: Templates) -> list[FieldError]:
    """Templates that would fail at bind time: bad syntax or unknown names."""
    known = {*job.params, "run_id", "job_id"}
    fields = [(f"program.{key}", text) for key, text in job.program.template_fields()]
    for kind, entries in (("condition", job.conditions), ("action", job.actions)):
        for i, entry in enumerate(entries):
            fields += [(f"{kind}[{i}].{key}", text) for key, text in entry.template_fields()]
    checked = (check_template(templates, text, known, path) for path, text in fields)
    return [e for e in checked if e is not None]


def _check_schedule_args(
    params: tuple[str, ...], schedules: list[tuple[str, Schedule | None]]
) -> list[FieldError]:
    """Every schedule must give every param, in its args or automatically."""
    errors = []
    for path, schedule in schedules:
        if schedule is None:
            continue
        missing = [p for p in params if p not in supplied_args(schedule)]
        if missing:
            errors.append(
                FieldError(path, f"no value for param(s) {', '.join(missing)}: give them in args")
            )
    return errors


def job_error(job_id: str, path: str, exc: Invalid) -> list[JobError]:
    return [JobError(job_id, path, e.key_path, e.message) for e in exc.errors]


def next_times(job: Job, start: float, n: int) -> list[Due]:
    """The next `n` due times of a job's enabled schedules at or after `start`, in order."""
    streams = [itertools.islice(s.due(start, job.params), n) for s in job.schedules if s.enabled]
    return list(itertools.islice(heapq.merge(*streams, key=lambda d: d.time), n))


def args_for(job: Job, args: Mapping[str, str]) -> dict[str, str]:
    """The args of a run of `job` made by hand; ValueError unless they are exactly
    its params, each text a process can be given (`runs.check_args`)."""
    unknown = set(args) - set(job.params)
    if unknown:
        raise ValueError(f"job {job.job_id} has no param(s): {', '.join(sorted(unknown))}")
    missing = [p for p in job.params if p not in args]
    if missing:
        raise ValueError(f"job {job.job_id} needs arg(s): {', '.join(missing)}")
    check_args(args)
    return dict(args)
