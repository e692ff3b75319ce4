"""`apsis wait`: block until a run finishes and exit with its outcome."""

from __future__ import annotations

import argparse

from apsis_common.states import State
from cli.arguments import run_id
from cli.client import Json
from cli.commands import Commands, run_line
from cli.context import Context

# wait's exit status by final state: success 0, failure 1, error or skipped 2.
OUTCOMES = {State.SUCCESS: 0, State.FAILURE: 1, State.ERROR: 2, State.SKIPPED: 2}


def finished(run: Json) -> bool:
    try:
        return State(str(run.get("state"))).finished
    except ValueError:
        return False


def outcome(run: Json) -> int:
    """The exit status for a finished run."""
    try:
        return OUTCOMES.get(State(str(run.get("state"))), 2)
    except ValueError:
        return 2


def wait_for(ctx: Context, rid: str) -> Json:
    """Poll `GET /runs/{id}` until the run is finished; its last summary."""
    while True:
        run: Json = ctx.client.run(rid)["run"]
        if finished(run):
            return run
        ctx.sleep()


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
