"""`apsis wait`: block until a run finishes and exit with its outcome."""

from __future__ import annotations

import argparse

from cli.arguments import run_id
from cli.client import Json
from cli.commands import Commands, run_line
from cli.commands.follow import Follow, follow_run, outcome
from cli.context import Context


def wait_for(ctx: Context, rid: str) -> Json:
    """Follow the run's feed (a spinner on a terminal) until it finishes; its last summary."""
    return follow_run(ctx, rid, Follow(progress=True))


def _wait(ctx: Context, args: argparse.Namespace) -> int:
    run = wait_for(ctx, run_id(args.run))
    if args.json:
        ctx.print_json({"run": run})
    elif not args.quiet:
        ctx.say(run_line(run))
    return outcome(run)


def register(commands: Commands) -> None:
    parser = commands.add(
        "wait",
        _wait,
        "block until a run finishes; exit 0 on success, 1 on failure, 2 on error or skipped",
        json=True,
    )
    parser.add_argument("run", metavar="RUN", help="run id (r42 or 42)")
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing")
