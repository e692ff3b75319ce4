"""The job-dir configuration: `jobs.yaml` at the root of a jobs directory.

It gives defaults per folder and named types of programs, conditions and actions,
so job files say only what is theirs (docs/jobs.md, "The jobs directory's
jobs.yaml"). Pure: `parse_jobs_config` reads its YAML form, `JobsConfig.apply`
turns a job file's YAML into what it means with them, before `parse_job` reads it.

```yaml
defaults:                      # by folder: "" every job, "etl/" the jobs under etl/
  "": {labels: [nightly]}
  etl/:
    program: {host: etl1, user: etl}   # merged into process programs (shell, program)
    waiting: {max_time: 1h}
programs:                      # job files say `program: {type: etl-python, argv: [...]}`
  etl-python: {type: program, host: etl1, user: etl, env: {PYTHONPATH: /opt/etl}}
conditions:
  after-load: {type: dependency, job_id: etl/load}
actions:
  page-ops: {type: webhook, url: "https://ops.example/hook"}
```

A job's own keys win over its folders' defaults, and a deeper folder's over a
shallower one's; mappings merge key by key (`env: {vars}`, `metadata`), labels add
up, and a default condition or action comes before the job's own. A named type is
a partial definition of a built-in type (or an installed plugin's); the job's keys
are laid over it the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from apsis_server.core.actions import ACTION_TYPES
from apsis_server.core.conditions import CONDITION_TYPES
from apsis_server.core.fields import FieldError, Fields, Invalid, items, string
from apsis_server.core.programs import INTERNAL_TYPES, PROGRAM_TYPES

FILE = "jobs.yaml"
# What a folder's defaults may set: keys of a job file.
DEFAULT_KEYS = ("program", "waiting", "labels", "metadata", "catch_up", "conditions", "actions")
_NOT_PROCESSES = ("no-op", *INTERNAL_TYPES)


@dataclass(frozen=True)
class JobsConfig:
    """Defaults by folder ("" is every job; "a/b/" the jobs under a/b/), and named
    program, condition and action types."""

    defaults: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    programs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    conditions: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    actions: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def apply(self, job_id: str, data: Any) -> Any:
        """A job file's YAML with its folders' defaults and named types resolved
        (unchanged when it is not a mapping: `parse_job` says what is wrong)."""
        if not isinstance(data, Mapping):
            return data
        job = dict(data)
        if isinstance(job.get("program"), Mapping):  # first: is it a process?
            job["program"] = _named(job["program"], self.programs)
        folders = sorted((f for f in self.defaults if job_id.startswith(f)), key=len)
        for folder in reversed(folders):  # the deepest first: it wins
            job = _with_defaults(job, self.defaults[folder])
        for one, many, named in (
            ("condition", "conditions", self.conditions),
            ("action", "actions", self.actions),
        ):
            for key in (one, many):
                value = job.get(key)
                if isinstance(value, Mapping):
                    job[key] = _named(value, named)
                elif isinstance(value, list):
                    job[key] = [_named(v, named) if isinstance(v, Mapping) else v for v in value]
        return job


def _named(value: Mapping[str, Any], named: Mapping[str, Mapping[str, Any]]) -> Any:
    """A mapping whose `type` is a named type: the named type's keys, then its own."""
    kind = value.get("type")
    if isinstance(kind, str) and kind in named:
        return _merged(named[kind], {k: v for k, v in value.items() if k != "type"})
    return value


def _merged(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """`over` laid on `base`: mappings in both are merged the same way (`env: {vars}`),
    any other value of `over` wins."""
    out = dict(base)
    for key, value in over.items():
        below = out.get(key)
        if isinstance(below, Mapping) and isinstance(value, Mapping):
            out[key] = _merged(below, value)
        else:
            out[key] = value
    return out


def _as_mapping(program: Any) -> Any:
    """A program's short forms as the mapping they stand for."""
    if isinstance(program, str):
        return {"type": "shell", "command": program}
    if isinstance(program, list):
        return {"type": "program", "argv": program}
    return program


def _with_defaults(job: dict[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(job)
    for key, value in defaults.items():
        if key == "program":
            program = _as_mapping(out.get("program"))
            if isinstance(program, Mapping) and program.get("type") not in _NOT_PROCESSES:
                out["program"] = _merged(value, program)
        elif key == "labels":
            mine = out.get("labels") or []
            out["labels"] = [*value, *mine] if isinstance(mine, list) else mine
        elif key == "metadata":
            mine = out.get("metadata")
            out["metadata"] = _merged(value, mine) if isinstance(mine, Mapping) else mine or value
        elif key in ("conditions", "actions"):
            one = key[:-1]
            mine = out.pop(key, None) if key in out else out.pop(one, None)
            mine = [] if mine is None else mine if isinstance(mine, list) else [mine]
            out[key] = [*value, *mine]
        elif key not in out:
            out[key] = value
    return out


def parse_jobs_config(data: Any, types: Mapping[str, Iterable[str]] | None = None) -> JobsConfig:
    """`jobs.yaml`'s YAML (None: empty); `Invalid` with every error found.

    `types`: the program, condition and action type names a named type may be based
    on, by key (`programs`, ...): the built-in ones and the plugins' (default: the
    built-in ones).
    """
    known = {"programs": PROGRAM_TYPES, "conditions": CONDITION_TYPES, "actions": ACTION_TYPES}
    known.update({k: tuple(v) for k, v in (types or {}).items()})
    f = Fields(data or {}, "", "a mapping of defaults, programs, conditions, actions")
    errors: list[FieldError] = []
    defaults = _mappings(f.take("defaults", _raw, {}), "defaults", errors)
    for folder, values in defaults.items():
        if folder not in ("", "/") and not folder.endswith("/"):
            errors.append(FieldError(f"defaults.{folder}", 'a folder ends with / (or is "")'))
        for key in values:
            if key not in DEFAULT_KEYS:
                allowed = ", ".join(DEFAULT_KEYS)
                errors.append(FieldError(f"defaults.{folder}.{key}", f"expected one of {allowed}"))
        _check_default_values(folder, values, errors)
    named = {}
    for key, builtins in known.items():
        named[key] = _mappings(f.take(key, _raw, {}), key, errors)
        for name, value in named[key].items():
            _check_named(f"{key}.{name}", name, value, builtins, errors)
    try:
        f.done()
    except Invalid as exc:
        errors += exc.errors
    if errors:
        raise Invalid(errors)
    return JobsConfig(
        {("" if k == "/" else k): v for k, v in defaults.items()},
        named["programs"],
        named["conditions"],
        named["actions"],
    )


def _raw(value: Any, path: str) -> Any:
    return value


def _mappings(value: Any, path: str, errors: list[FieldError]) -> dict[str, dict[str, Any]]:
    """A mapping of names to mappings; errors for anything else."""
    if not isinstance(value, Mapping):
        errors.append(FieldError(path, "expected a mapping"))
        return {}
    out = {}
    for name, entry in value.items():
        if not isinstance(name, str) or not isinstance(entry, Mapping):
            errors.append(FieldError(f"{path}.{name}", "expected a mapping"))
            continue
        out[name] = dict(entry)
    return out


def _check_default_values(folder: str, values: Mapping[str, Any], errors: list[FieldError]) -> None:
    at = f"defaults.{folder}"
    for key in ("program", "waiting", "metadata"):
        if key in values and not isinstance(values[key], Mapping):
            errors.append(FieldError(f"{at}.{key}", "expected a mapping"))
    if isinstance(values.get("program"), Mapping) and "type" in values["program"]:
        errors.append(
            FieldError(f"{at}.program.type", "defaults give keys of programs, not their type")
        )
    for key in ("labels", "conditions", "actions"):
        if key in values and not isinstance(values[key], list):
            errors.append(FieldError(f"{at}.{key}", "expected a list"))
    labels = values.get("labels")
    for value, path in items(labels if isinstance(labels, list) else [], f"{at}.labels"):
        try:
            string(value, path)
        except Invalid as exc:
            errors += exc.errors


def _check_named(
    path: str,
    name: str,
    value: Mapping[str, Any],
    builtins: tuple[str, ...],
    errors: list[FieldError],
) -> None:
    if name in builtins or "." in name:
        errors.append(FieldError(path, f"{name!r} is a built-in type name (or has a dot)"))
    kind = value.get("type")
    if kind not in builtins:
        expected = ", ".join(builtins)
        errors.append(FieldError(f"{path}.type", f"expected a built-in type ({expected})"))
