"""An example Apsis plugin: one type of each kind, as docs/extending.md describes them.

- `example-echo` (program): `{words: [...], upper: false}` echoes the words.
- `example-every` (schedule): `{seconds: N}` is due at every multiple of N seconds.
- `example-after` (condition): `{job_id: J}` waits until a run of J has succeeded.
- `example-record` (action): `{path: FILE}` appends "run_id job_id state" to FILE.
- `shout` (template function): `{{ shout(name) }}` is the name in capitals, with `!`.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apsis_server.core.extensions import (
    FieldError,
    Fields,
    Invalid,
    ProcessSpec,
    Run,
    RunsView,
    State,
    Verdict,
    VerdictKind,
)


def _words(value: Any, path: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(w, str) for w in value):
        raise Invalid([FieldError(path, "expected a non-empty list of words")])
    return tuple(value)


def _flag(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise Invalid([FieldError(path, "expected true or false")])
    return value


def _seconds(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise Invalid([FieldError(path, f"expected a positive number of seconds, got {value!r}")])
    return float(value)


def _text(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value:
        raise Invalid([FieldError(path, "expected some text")])
    return value


class EchoProgram:
    """`example-echo`: echo the words (each may be a template), in capitals with
    `upper: true`."""

    def parse(self, fields: Fields) -> ProcessSpec:
        words = fields.need("words", _words)
        upper = fields.take("upper", _flag, False)
        if upper:
            words = tuple(w.upper() for w in words)
        return ProcessSpec(argv=("/bin/echo", *words), env={"EXAMPLE_PLUGIN": "echo"})


@dataclass(frozen=True)
class Every:
    seconds: float

    def times(self, start: float) -> Iterator[float]:
        n = math.ceil(start / self.seconds)
        while True:
            yield n * self.seconds
            n += 1

    def describe(self) -> str:
        return f"every {self.seconds:g} seconds (example)"


class EverySchedule:
    """`example-every`: due at every multiple of `seconds` since the epoch."""

    def parse(self, fields: Fields) -> Every:
        return Every(fields.need("seconds", _seconds))


@dataclass(frozen=True)
class After:
    job_id: str

    def check(self, run: Run, view: RunsView, expand: Callable[[str], str]) -> Verdict:
        job_id = expand(self.job_id)
        if view.params(job_id) is None:
            return Verdict(VerdictKind.ERROR, f"no job {job_id}")
        if view.exists(job_id, {}, [State.SUCCESS], run.run_id):
            return Verdict(VerdictKind.READY)
        return Verdict(VerdictKind.WAIT, f"waiting for a success of {job_id}", watch=(job_id,))


class AfterCondition:
    """`example-after`: wait until a run of `job_id` (a template) has succeeded."""

    def parse(self, fields: Fields) -> After:
        return After(fields.need("job_id", _text))


@dataclass(frozen=True)
class Record:
    path: Path

    async def fire(self, run: Run) -> str | None:
        line = f"{run.run_id} {run.job_id} {run.state.value}\n"
        await asyncio.to_thread(self._append, line)
        return f"recorded in {self.path}"

    def _append(self, line: str) -> None:
        with self.path.open("a") as f:
            f.write(line)


class RecordAction:
    """`example-record`: append `run_id job_id state` to the file at `path`."""

    def parse(self, fields: Fields) -> Record:
        return Record(Path(fields.need("path", _text)))


def shout(value: object) -> str:
    """`{{ shout(name) }}`: the text in capitals, with an exclamation mark."""
    return str(value).upper() + "!"
