"""What a condition says of a waiting run (a verdict), and the view of other runs it reads."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from apsis_common.states import State


class RunsView(Protocol):
    """What condition checks need to know about other runs."""

    def exists(
        self, job_id: str, args: Mapping[str, str], states: Sequence[State], exclude: str
    ) -> bool:
        """Whether a run (other than `exclude`) of the job, with these args, is in `states`."""

    def count(self, job_id: str, args: Mapping[str, str] | None, states: Sequence[State]) -> int:
        """How many runs of the job (with these args, if given) are in `states`."""

    def params(self, job_id: str) -> tuple[str, ...] | None:
        """The params of a job, or None if there is no such job."""


class VerdictKind(enum.StrEnum):
    READY = "ready"
    WAIT = "wait"
    SKIP = "skip"
    ERROR = "error"


@dataclass(frozen=True)
class Verdict:
    """`ready`, `wait` (with what is awaited), `skip` or `error` (with why)."""

    kind: VerdictKind
    message: str = ""
    watch: tuple[str, ...] = ()  # job ids whose changes may change the verdict
