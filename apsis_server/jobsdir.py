"""Loading every job file under a jobs directory, and the calendar files of a calendar
directory; one bad file never stops the rest."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from apsis_server.core.actions import ScheduleAction
from apsis_server.core.calendars import Calendar, parse_cal_text, parse_calendar_data
from apsis_server.core.conditions import DependencyCondition
from apsis_server.core.extensions import Extensions
from apsis_server.core.fields import FieldError, Invalid
from apsis_server.core.jobs import Job, JobError, job_error, parse_job
from apsis_server.core.jobsconfig import FILE as JOBS_CONFIG
from apsis_server.core.jobsconfig import JobsConfig, parse_jobs_config
from apsis_server.core.templates import Templates
from apsis_server.core.yamlfile import MAX_FILE_SIZE, TOO_LARGE, load_yaml

CALENDAR_SUFFIXES = (".cal", ".yaml")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobsLoad:
    """The jobs that loaded, the errors of those that did not, and warnings about
    references between jobs (to a job that does not exist, or to a param it lacks)."""

    jobs: dict[str, Job]
    errors: list[JobError]
    warnings: list[JobError] = field(default_factory=list)


@dataclass(frozen=True)
class CalendarsLoad:
    """Calendars by name (the file name without its suffix), and the files that failed.

    A calendar's errors use the calendar name as `job_id` and its file as `path`.
    """

    calendars: dict[str, Calendar] = field(default_factory=dict)
    errors: list[JobError] = field(default_factory=list)


def _read(path: Path) -> str:
    """The file's text; `Invalid` when it cannot be read or is larger than the limit.

    Never more than the limit is read, and a FIFO (or device) named `*.yaml` is refused
    rather than waited on.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise Invalid([FieldError("", "cannot read: not a regular file")])
            data = f.read(MAX_FILE_SIZE + 1)
        if len(data) > MAX_FILE_SIZE:
            raise Invalid([FieldError("", TOO_LARGE)])
        return data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise Invalid([FieldError("", f"cannot read: {exc}")]) from None


def _unexpected(name: str, path: str, exc: Exception) -> JobError:
    """A file's error for an exception its parser should have made an `Invalid`: a bug,
    logged with its traceback, but one file never stops the rest from loading."""
    log.error("cannot load %s", path, exc_info=exc)
    return JobError(name, path, "", f"cannot load: {type(exc).__name__}: {exc}")


def load_jobs_dir(
    jobs_dir: Path,
    templates: Templates,
    calendars: Mapping[str, Calendar] | None = None,
    extensions: Extensions | None = None,
) -> JobsLoad:
    """Every `*.yaml` under `jobs_dir`; the job id is the path without `.yaml`.

    Files and folders whose names start with `.` are ignored, and `jobs.yaml` at the
    root is the directory's configuration (`core/jobsconfig.py`), applied to every
    job file; while it has errors, no job loads. `extensions`: the types job files
    may name (default: the built-in ones).
    """
    extensions = extensions or Extensions()
    jobs: dict[str, Job] = {}
    errors: list[JobError] = []
    if not jobs_dir.is_dir():
        errors.append(JobError("", str(jobs_dir), "", "jobs directory does not exist"))
        return JobsLoad(jobs, errors)
    config, errors = _jobs_config(jobs_dir, extensions)
    for path in sorted(jobs_dir.rglob("*.yaml")):
        rel = path.relative_to(jobs_dir)
        if any(part.startswith(".") for part in rel.parts) or rel.as_posix() == JOBS_CONFIG:
            continue
        job_id = rel.as_posix()[: -len(".yaml")]
        if config is None:  # no job is loaded as it would be without its defaults
            message = f"not loaded: {JOBS_CONFIG} has errors"
            errors.append(JobError(job_id, rel.as_posix(), "", message))
            continue
        try:
            data = config.apply(job_id, load_yaml(_read(path)))
            jobs[job_id] = parse_job(
                job_id, data, templates, calendars=calendars, extensions=extensions
            )
        except Invalid as exc:
            errors.extend(job_error(job_id, rel.as_posix(), exc))
        except Exception as exc:
            errors.append(_unexpected(job_id, rel.as_posix(), exc))
    failed = {e.job_id for e in errors}
    return JobsLoad(jobs, errors, check_references(jobs, failed))


def _jobs_config(
    jobs_dir: Path, extensions: Extensions
) -> tuple[JobsConfig | None, list[JobError]]:
    """The jobs directory's `jobs.yaml` (empty when there is none); None and its
    errors when it is bad."""
    path = jobs_dir / JOBS_CONFIG
    if not path.exists():
        return JobsConfig(), []
    try:
        types = {
            "programs": tuple(extensions.programs),
            "conditions": tuple(extensions.conditions),
            "actions": tuple(extensions.actions),
        }
        return parse_jobs_config(load_yaml(_read(path)), types), []
    except Invalid as exc:
        return None, job_error("", JOBS_CONFIG, exc)
    except Exception as exc:
        return None, [_unexpected("", JOBS_CONFIG, exc)]


def _references(job: Job) -> list[tuple[str, str, dict[str, str]]]:
    """(key path, job id, args) of every other job a job names."""
    out = []
    for kind, entries in (("condition", job.conditions), ("action", job.actions)):
        for i, entry in enumerate(entries):
            if isinstance(entry, DependencyCondition | ScheduleAction):
                out.append((f"{kind}[{i}]", entry.job_id, dict(entry.args)))
    return out


def check_references(jobs: Mapping[str, Job], failed: set[str]) -> list[JobError]:
    """Warnings for references to jobs that do not exist, or to params they do not have.

    Templated job ids cannot be checked before a run; jobs whose files failed to load
    exist but cannot be checked either. A key path `action[i]` counts `successors`
    after the actions.
    """
    warnings = []
    for job in jobs.values():
        path = f"{job.job_id}.yaml"
        for where, other_id, args in _references(job):
            if "{" in other_id or other_id in failed:
                continue
            other = jobs.get(other_id)
            if other is None:
                warnings.append(JobError(job.job_id, path, where, f"no job {other_id!r}"))
                continue
            unknown = sorted(set(args) - set(other.params))
            if unknown:
                message = f"job {other_id!r} has no param(s) {', '.join(unknown)}"
                warnings.append(JobError(job.job_id, path, f"{where}.args", message))
    return warnings


def load_calendars_dir(calendars_dir: Path) -> CalendarsLoad:
    """Every `NAME.cal` (ora's format) and `NAME.yaml` (holiday format) in the directory.

    See docs/jobs.md for both formats. A name given by both files is an error.
    """
    loaded = CalendarsLoad()
    if not calendars_dir.is_dir():
        loaded.errors.append(
            JobError("", str(calendars_dir), "", "calendar directory does not exist")
        )
        return loaded
    for path in sorted(calendars_dir.iterdir()):
        if path.suffix not in CALENDAR_SUFFIXES or path.name.startswith("."):
            continue
        name = path.stem
        try:
            if name in loaded.calendars:
                raise Invalid([FieldError("", f"calendar {name!r} is defined by two files")])
            text = _read(path)
            if path.suffix == ".cal":
                calendar = parse_cal_text(name, text)
            else:
                calendar = parse_calendar_data(name, load_yaml(text))
            loaded.calendars[name] = calendar
        except Invalid as exc:
            loaded.errors.extend(job_error(name, path.name, exc))
        except Exception as exc:
            loaded.errors.append(_unexpected(name, path.name, exc))
    return loaded
