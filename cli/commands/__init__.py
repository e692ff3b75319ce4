"""Subcommands, one module per group; each module's `register` adds its parsers."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cli.arguments import match_job
from cli.client import Json
from cli.context import Context

Handler = Callable[[Context, argparse.Namespace], int]


@dataclass(frozen=True)
class Commands:
    """Adds subcommands that share the global options and know their handler."""

    subparsers: argparse._SubParsersAction[argparse.ArgumentParser]
    parents: Sequence[argparse.ArgumentParser]

    def add(
        self, name: str, handler: Handler, help: str, *, json: bool = False
    ) -> argparse.ArgumentParser:
        parser = self.subparsers.add_parser(
            name, help=help, description=help, parents=list(self.parents)
        )
        parser.set_defaults(handler=handler)
        if json:
            parser.add_argument("--json", action="store_true", help="print the server's JSON")
        return parser


def resolve_job(ctx: Context, query: str) -> str:
    """The job id `query` names, matched against `GET /jobs` (see `arguments.match_job`)."""
    answer = ctx.client.jobs()
    ids = [str(job["job_id"]) for job in answer.get("jobs") or () if "job_id" in job]
    # Jobs that failed to load can still be named, to see their errors.
    ids += [str(err["job_id"]) for err in answer.get("errors") or () if err.get("job_id")]
    return match_job(query, ids)


def run_line(run: Json) -> str:
    """`r42 demo/hello date=2026-11-26: running (running as pid 7)`; the message
    only when it says more than the state."""
    args = " ".join(f"{k}={v}" for k, v in (run.get("args") or {}).items())
    adhoc = run.get("origin") == "adhoc" or not run.get("job_id")
    job = "(ad hoc)" if adhoc else run["job_id"]
    words = [str(run.get("run_id")), str(job), *([args] if args else [])]
    said = run.get("message")
    message = f" ({said})" if said and said != run.get("state") else ""
    return f"{' '.join(words)}: {run.get('state')}{message}"
