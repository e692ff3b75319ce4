"""A run's output and run log: `output` (raw bytes, tail, follow) and `log`."""

from __future__ import annotations

import argparse

from cli import arguments, render
from cli.client import Json
from cli.commands import Commands
from cli.commands.wait import finished
from cli.context import Context
from cli.errors import UsageError

# Size of the first chunk fetched from the end for --tail; doubled until enough lines.
TAIL_CHUNK = 64 * 1024


def drain(ctx: Context, rid: str, offset: int) -> int:
    """Write the output from `offset` to its current end, exactly; the new offset."""
    out = ctx.stdout_bytes
    while True:
        chunk = ctx.client.output(rid, start=offset)
        if chunk.data:
            out.write(chunk.data)
            out.flush()
            offset += len(chunk.data)
        if not chunk.data or offset >= chunk.length:
            return offset


def write_output(ctx: Context, rid: str) -> None:
    """Write the whole output of a run to stdout, unaltered."""
    drain(ctx, rid, 0)


def read_range(ctx: Context, rid: str, start: int, stop: int) -> bytes:
    """The output from `start` to `stop`, in as many requests as the server needs."""
    parts = []
    while start < stop:
        data = ctx.client.output(rid, start=start, stop=stop).data
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


def tail(ctx: Context, rid: str, count: int) -> int:
    """Write the last `count` lines; the offset of the end of what was written."""
    length = ctx.client.output(rid, start=0, stop=0).length
    size = TAIL_CHUNK
    while True:
        start = max(0, length - size)
        data = read_range(ctx, rid, start, length)
        lines = last_lines(data, count, start == 0)
        if lines is not None:
            out = ctx.stdout_bytes
            out.write(lines)
            out.flush()
            return start + len(data)
        size *= 2


def follow(ctx: Context, rid: str, offset: int) -> None:
    """Write output as it comes until the run is finished and all of it is written."""
    while True:
        done = finished(ctx.client.run(rid)["run"])
        # Read after checking the state: once finished, this reaches the final end.
        offset = drain(ctx, rid, offset)
        if done:
            return
        ctx.sleep()


def _output(ctx: Context, args: argparse.Namespace) -> int:
    rid = arguments.run_id(args.run)
    if args.tail is not None and args.tail < 0:
        raise UsageError("--tail must not be negative")
    offset = tail(ctx, rid, args.tail) if args.tail is not None else drain(ctx, rid, 0)
    if args.follow:
        follow(ctx, rid, offset)
    return 0


def _show_entries(ctx: Context, entries: list[Json]) -> None:
    if entries:
        ctx.show(render.log_table(entries, ctx.now()))


def _log(ctx: Context, args: argparse.Namespace) -> int:
    rid = arguments.run_id(args.run)
    if args.json:
        ctx.print_json(ctx.client.run_log(rid))
        return 0
    shown = 0
    while True:
        done = not args.follow or finished(ctx.client.run(rid)["run"])
        entries: list[Json] = ctx.client.run_log(rid).get("log") or []
        _show_entries(ctx, entries[shown:])
        shown = max(shown, len(entries))
        if done:
            return 0
        ctx.sleep()


def register(commands: Commands) -> None:
    parser = commands.add("output", _output, "write a run's output, byte for byte")
    parser.add_argument("run", metavar="RUN", help="run id (r42 or 42)")
    parser.add_argument(
        "-f", "--follow", action="store_true", help="keep writing output until the run finishes"
    )
    parser.add_argument("-n", "--tail", metavar="N", type=int, help="only the last N lines")

    parser = commands.add("log", _log, "show a run's log of transitions and messages", json=True)
    parser.add_argument("run", metavar="RUN", help="run id (r42 or 42)")
    parser.add_argument(
        "-f", "--follow", action="store_true", help="keep showing entries until the run finishes"
    )
