"""Following one run until it finishes: its websocket feed, or polling when there is none.

`follow_run` writes the run's output and shows its new log entries as they come,
with a spinner on stderr if asked, and returns the run's final summary. When the
feed cannot be opened (or is lost for good) it carries on from where the feed
stopped by polling the REST API every `--poll` seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

from apsis_common.states import State
from cli import render
from cli.client import Json
from cli.context import Context
from cli.errors import FeedUnavailable
from cli.feeds import LogAdded, OutputAdded, RunChanged, RunFeed, RunUpdate
from cli.progress import RunProgress

# The exit status by final state: success 0, failure 1, error or skipped 2.
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


def drain(ctx: Context, rid: str, offset: int, name: str = "merged") -> int:
    """Write output `name` from `offset` to its current end, exactly; the new offset."""
    out = ctx.stdout_bytes
    while True:
        chunk = ctx.client.output(rid, start=offset, name=name)
        if chunk.data:
            out.write(chunk.data)
            out.flush()
            offset += len(chunk.data)
        if not chunk.data or offset >= chunk.length:
            return offset


def show_entries(ctx: Context, entries: list[Json]) -> None:
    if entries:
        ctx.show(render.log_table(entries, ctx.now()))


@dataclass(frozen=True)
class Follow:
    """What to do while following a run."""

    output: int | None = None  # write the output from this offset on stdout
    name: str = "merged"  # which output: merged, stdout or stderr
    log: bool = False  # show new run log entries
    progress: bool = False  # a spinner on stderr, if it is a terminal


def follow_run(ctx: Context, rid: str, how: Follow) -> Json:
    """Follow the run until it finishes, doing `how`; its final summary."""
    feed = RunFeed(ctx.feeds, rid, offset=how.output, name=how.name)
    # A spinner would tear output written to the same terminal.
    spin = how.progress and ctx.stderr_tty and not (how.output is not None and ctx.stdout_tty)
    with RunProgress(spin) as progress:
        try:
            for update in feed:
                _apply(ctx, how, progress, update)
        except FeedUnavailable:
            pass  # carry on by polling from where the feed stopped
        if feed.done and feed.run is not None and finished(feed.run):
            return feed.run
        offset = how.output if feed.offset is None else feed.offset
        return _poll(ctx, rid, how, progress, offset, len(feed.log))


def _apply(ctx: Context, how: Follow, progress: RunProgress, update: RunUpdate | None) -> None:
    if isinstance(update, OutputAdded) and how.output is not None and update.data:
        out = ctx.stdout_bytes
        out.write(update.data)
        out.flush()
    elif isinstance(update, LogAdded) and how.log:
        show_entries(ctx, update.entries)
    elif isinstance(update, RunChanged):
        progress.update(update.run)


def _poll(
    ctx: Context, rid: str, how: Follow, progress: RunProgress, offset: int | None, shown: int
) -> Json:
    while True:
        run: Json = ctx.client.run(rid)["run"]
        progress.update(run)
        # Read after the state: once finished, these reach the final end.
        if offset is not None:
            offset = drain(ctx, rid, offset, how.name)
        if how.log:
            entries: list[Json] = ctx.client.run_log(rid).get("log") or []
            show_entries(ctx, entries[shown:])
            shown = max(shown, len(entries))
        if finished(run):
            return run
        ctx.sleep()
