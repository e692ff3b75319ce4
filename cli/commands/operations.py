"""Operations on one run: start, skip, stop, kill, rerun, signal, mark and error."""

from __future__ import annotations

import argparse
import functools
import signal as signals

from cli import arguments
from cli.commands import Commands, Handler, run_line
from cli.context import Context
from cli.errors import UsageError

OPERATIONS = {
    "start": "start a scheduled or waiting run now",
    "skip": "skip a scheduled or waiting run",
    "stop": "stop a running run (its stop signal, then SIGKILL after the grace time)",
    "kill": "kill a running run with SIGKILL",
    "rerun": "create a new run with the same job and args",
}


def signal_name(text: str) -> str:
    """`SIGTERM` from `SIGTERM`, `term` or `15`."""
    text = text.strip().upper()
    if text.isdigit():
        try:
            return signals.Signals(int(text)).name
        except ValueError:
            raise UsageError(f"unknown signal number {text}") from None
    name = text if text.startswith("SIG") else f"SIG{text}"
    if name not in signals.Signals.__members__:
        raise UsageError(f"unknown signal {text!r}")
    return name


def _report(ctx: Context, args: argparse.Namespace, answer: dict[str, object]) -> int:
    if args.json:
        ctx.print_json(answer)
        return 0
    run = answer.get("run")
    if not isinstance(run, dict):
        ctx.say(str(answer))
    elif run.get("rerun_of") and run.get("run_id") != arguments.run_id(args.run):
        ctx.say(f"{run_line(run)}, a rerun of {run['rerun_of']}")
    else:
        ctx.say(run_line(run))
    return 0


def _operate(operation: str, ctx: Context, args: argparse.Namespace) -> int:
    return _report(ctx, args, ctx.client.operate(arguments.run_id(args.run), operation))


def _signal(ctx: Context, args: argparse.Namespace) -> int:
    rid = arguments.run_id(args.run)
    return _report(ctx, args, ctx.client.signal(rid, signal_name(args.signal)))


def _mark(ctx: Context, args: argparse.Namespace) -> int:
    rid = arguments.run_id(args.run)
    state = arguments.state(args.state).value
    return _report(ctx, args, ctx.client.mark(rid, state, args.message))


def _error(ctx: Context, args: argparse.Namespace) -> int:
    rid = arguments.run_id(args.run)
    return _report(ctx, args, ctx.client.force_error(rid, args.message))


def register(commands: Commands) -> None:
    for operation, help in OPERATIONS.items():
        handler: Handler = functools.partial(_operate, operation)
        parser = commands.add(operation, handler, help, json=True)
        parser.add_argument("run", metavar="RUN", help="run id (r42 or 42)")

    parser = commands.add("signal", _signal, "send a signal to a running run", json=True)
    parser.add_argument("run", metavar="RUN", help="run id (r42 or 42)")
    parser.add_argument("signal", metavar="SIG", help="signal name or number (TERM, SIGUSR1, 9)")

    parser = commands.add("mark", _mark, "mark a finished run with another final state", json=True)
    parser.add_argument("run", metavar="RUN", help="run id (r42 or 42)")
    parser.add_argument("state", metavar="STATE", help="success, failure, error or skipped")
    parser.add_argument("--message", "-m", help="why (in the run's log; default: marked by hand)")

    help = "put an unfinished run in error (a wedged run); its process, if any, is killed"
    parser = commands.add("error", _error, help, json=True)
    parser.add_argument("run", metavar="RUN", help="run id (r42 or 42)")
    parser.add_argument("--message", "-m", help="why (default: set to error by hand)")
