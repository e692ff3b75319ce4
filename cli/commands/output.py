"""A run's output and run log: `output` (raw bytes, tail, follow) and `log`.

`--follow` reads the run's websocket feed (polling when it cannot be opened).
"""

from __future__ import annotations

import argparse

from apsis_common.states import FINISHED, State
from cli import arguments, render
from cli.commands import Commands
from cli.commands.follow import Follow, drain, follow_run, show_entries
from cli.context import Context
from cli.errors import UsageError

# Size of the first chunk fetched from the end for --tail; doubled until enough lines.
TAIL_CHUNK = 64 * 1024


def read_range(ctx: Context, rid: str, start: int, stop: int, name: str = "merged") -> bytes:
    """Output `name` from `start` to `stop`, in as many requests as the server needs."""
    parts = []
    while start < stop:
        data = ctx.client.output(rid, start=start, stop=stop, name=name).data
        if not data:
            break
        parts.append(data)
        start += len(data)
    return b"".join(parts)


def last_lines(data: bytes, count: int, complete: bool) -> bytes | None:
    """The last `count` lines of `data`; None if `data` may not hold them all yet.

    `complete` says `data` starts at the beginning of the output.
    """
    if count == 0:
        return b""
    trailing = data.endswith(b"\n")
    lines = data.split(b"\n")
    if trailing:
        lines.pop()
    # The first line may be cut short unless the data starts at the beginning.
    if len(lines) <= count and not complete:
        return None
    return b"\n".join(lines[-count:]) + (b"\n" if trailing else b"")


def tail(ctx: Context, rid: str, count: int, name: str = "merged") -> int:
    """Write the last `count` lines; the offset of the end of what was written."""
    length = ctx.client.output(rid, start=0, stop=0, name=name).length
    size = TAIL_CHUNK
    while True:
        start = max(0, length - size)
        data = read_range(ctx, rid, start, length, name)
        lines = last_lines(data, count, start == 0)
        if lines is not None:
            out = ctx.stdout_bytes
            out.write(lines)
            out.flush()
            return start + len(data)
        size *= 2


def _output(ctx: Context, args: argparse.Namespace) -> int:
    rid = arguments.run_id(args.run)
    if args.tail is not None and args.tail < 0:
        raise UsageError("--tail must not be negative")
    name = args.name
    if args.tail is not None:
        offset = tail(ctx, rid, args.tail, name)
    elif args.follow:
        offset = 0  # the feed gives the output from the start
    else:
        offset = drain(ctx, rid, 0, name)
    if args.follow:
        follow_run(ctx, rid, Follow(output=offset, name=name))
    elif offset == 0:
        _say_why_empty(ctx, rid, name)
    return 0


def _say_why_empty(ctx: Context, rid: str, name: str) -> None:
    """Nothing was written: say why on stderr, so an empty answer is not a puzzle."""
    answer = ctx.client.run(rid)
    run = answer["run"]
    state = run.get("state")
    if name == "stderr" and (answer.get("program") or {}).get("stderr") == "merge":
        ctx.warn(f"{rid} merges its stderr into its stdout (program stderr: merge)")
    elif state in FINISHED:
        ctx.warn(f"{rid} ended {state} without writing any output")
    elif state in (State.RUNNING, State.STOPPING):
        ctx.warn(f"{rid} is {state} and has written nothing yet (apsis output {rid} -f follows)")
    else:
        due = render.epoch(run.get("schedule_time"))
        when = f"{render.absolute(due)} ({render.relative(due, ctx.now())})" if due else "now"
        ctx.warn(f"{rid} ({run.get('job_id')}) is {state}, due {when}: no output yet")


def _log(ctx: Context, args: argparse.Namespace) -> int:
    rid = arguments.run_id(args.run)
    if args.json:
        ctx.print_json(ctx.client.run_log(rid))
        return 0
    if args.follow:
        follow_run(ctx, rid, Follow(log=True))
    else:
        show_entries(ctx, ctx.client.run_log(rid).get("log") or [])
    return 0


def register(commands: Commands) -> None:
    parser = commands.add("output", _output, "write a run's output, byte for byte")
    parser.add_argument("run", metavar="RUN", help="run id (r42 or 42)")
    parser.add_argument(
        "-f", "--follow", action="store_true", help="keep writing output until the run finishes"
    )
    parser.add_argument("-n", "--tail", metavar="N", type=int, help="only the last N lines")
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--stdout",
        dest="name",
        action="store_const",
        const="stdout",
        default="merged",
        help="stdout alone (default: stdout and stderr, in the order the agent read them)",
    )
    which.add_argument(
        "--stderr", dest="name", action="store_const", const="stderr", help="stderr alone"
    )

    parser = commands.add("log", _log, "show a run's log of transitions and messages", json=True)
    parser.add_argument("run", metavar="RUN", help="run id (r42 or 42)")
    parser.add_argument(
        "-f", "--follow", action="store_true", help="keep showing entries until the run finishes"
    )
