"""Errors the CLI raises itself, on top of the shared tree: bad command lines, lost feeds."""

from __future__ import annotations

from collections.abc import Sequence

from apsis_common.errors import BadInput, Unavailable


class UsageError(BadInput):
    """The command line does not make sense; the CLI exits with status 2."""


class Ambiguous(UsageError):
    """A job id matched more than one job."""

    def __init__(self, query: str, candidates: Sequence[str]) -> None:
        lines = [f"job {query!r} is ambiguous; it matches:"]
        lines += [f"  {c}" for c in candidates]
        super().__init__("\n".join(lines))
        self.candidates = tuple(candidates)


class FeedUnavailable(Unavailable):
    """A websocket feed cannot be opened (a proxy, an old server): poll the REST API instead."""
