"""`apsis watch`: a live view of runs (of a job), or of one run until it finishes.

The view of runs is fed by `/api/v1/summary`: its snapshot, filled in with the
job's older runs from the REST API, then each change; a dropped connection gets a
fresh snapshot. The view of a run is fed by the run's updates. Without a
websocket both poll the REST API. The screen is redrawn at least every second.
When stdout is no terminal, the runs are lines instead: one per change of state.
"""

from __future__ import annotations

import argparse
import contextlib

from rich.console import Group, RenderableType
from rich.live import Live
from rich.text import Text

from cli import arguments, render
from cli.client import Json
from cli.commands import Commands, resolve_job, run_line
from cli.commands.follow import finished, outcome
from cli.context import Context
from cli.errors import FeedUnavailable, UsageError
from cli.feeds import RunFeed, SummaryFeed

WATCH_LIMIT = 30
# Seconds between redraws when nothing changes (times shown relative to now move on).
REDRAW = 1.0


def _is_run(text: str) -> bool:
    try:
        arguments.run_id(text)
    except UsageError:
        return False
    return True


def _number(run: Json) -> int:
    digits = str(run.get("run_id", "")).lstrip("r")
    return int(digits) if digits.isdigit() else -1


def select(runs: dict[str, Json], job_id: str | None, limit: int = WATCH_LIMIT) -> list[Json]:
    """The newest `limit` runs (of the job), newest first."""
    chosen = [r for r in runs.values() if job_id is None or r.get("job_id") == job_id]
    return sorted(chosen, key=_number, reverse=True)[:limit]


def _runs_frame(ctx: Context, runs: list[Json], job_id: str | None) -> RenderableType:
    title = Text(f"runs of {job_id}" if job_id else "runs", style="bold")
    return Group(title, render.runs_table(runs, ctx.now()))


# -- one run ------------------------------------------------------------------------


def _run_frame(ctx: Context, run: Json, log: list[Json], meta: Json | None) -> RenderableType:
    return render.run_detail(run, log, meta or None, ctx.now())


def _poll_run_frame(ctx: Context, rid: str) -> tuple[RenderableType, Json]:
    run: Json = ctx.client.run(rid)["run"]
    log = ctx.client.run_log(rid).get("log") or []
    return _run_frame(ctx, run, log, None), run


def _poll_run(ctx: Context, rid: str, once: bool) -> int:
    view, run = _poll_run_frame(ctx, rid)
    if once:
        ctx.show(view)
        return 0
    with Live(view, console=ctx.console, auto_refresh=False) as live:
        while not finished(run):
            ctx.sleep()
            view, run = _poll_run_frame(ctx, rid)
            live.update(view, refresh=True)
    return outcome(run)


def _watch_run(ctx: Context, rid: str, once: bool) -> int:
    """The run's details, live until it finishes; exit like `wait` (`--once`: 0)."""
    feed = RunFeed(ctx.feeds, rid, offset=None, idle=REDRAW)  # no output: only new output
    try:
        with contextlib.closing(iter(feed)) as updates:
            if once:
                # The run's state as of connecting ends with the first output message.
                next((u for u in updates if feed.ready), None)
                if feed.run is None:
                    raise FeedUnavailable("the feed ended before the run's state")
                ctx.show(_run_frame(ctx, feed.run, feed.log, feed.meta))
                return 0
            with Live(console=ctx.console, auto_refresh=False) as live:
                for _ in updates:
                    if feed.run is not None:
                        live.update(_run_frame(ctx, feed.run, feed.log, feed.meta), refresh=True)
    except FeedUnavailable:
        return _poll_run(ctx, rid, once)
    if feed.run is None or not finished(feed.run):
        return _poll_run(ctx, rid, once)
    return outcome(feed.run)


# -- runs -----------------------------------------------------------------------------


def _latest(ctx: Context, job_id: str | None) -> list[Json]:
    runs: list[Json] = ctx.client.runs(job_id=job_id, limit=WATCH_LIMIT).get("runs") or []
    return runs


def _poll_runs(ctx: Context, job_id: str | None, once: bool) -> int:
    def frame() -> RenderableType:
        return _runs_frame(ctx, _latest(ctx, job_id), job_id)

    if once:
        ctx.show(frame())
        return 0
    with Live(frame(), console=ctx.console, auto_refresh=False) as live:
        while True:
            ctx.sleep()
            live.update(frame(), refresh=True)


def _fill_in(ctx: Context, feed: SummaryFeed, job_id: str | None) -> None:
    """Add the (job's) latest finished runs that the snapshot may have left out."""
    for run in _latest(ctx, job_id):
        # The feed's version is newer: every change after the snapshot is in the feed.
        feed.runs.setdefault(str(run["run_id"]), run)


def _watch_runs(ctx: Context, job_id: str | None, once: bool) -> int:
    feed = SummaryFeed(ctx.feeds, idle=REDRAW)
    filled = 0
    try:
        with contextlib.closing(iter(feed)) as updates:
            live = None if once else Live(console=ctx.console, auto_refresh=False)
            with live or contextlib.nullcontext():
                for _ in updates:
                    if feed.snapshots != filled:  # a (fresh) snapshot
                        filled = feed.snapshots
                        _fill_in(ctx, feed, job_id)
                    frame = _runs_frame(ctx, select(feed.runs, job_id), job_id)
                    if live is None:
                        ctx.show(frame)
                        return 0
                    live.update(frame, refresh=True)
    except FeedUnavailable:
        pass
    return _poll_runs(ctx, job_id, once)


# -- without a terminal: a line per change ----------------------------------------


class Lines:
    """`watch > file`: each run's state as a line when it changes (a live table
    needs a terminal), the newest runs first shown oldest first."""

    def __init__(self, ctx: Context, job_id: str | None) -> None:
        self.ctx = ctx
        self.job_id = job_id
        self.seen: dict[str, object] | None = None

    def show(self, runs: dict[str, Json]) -> None:
        mine = {k: r for k, r in runs.items() if self.job_id in (None, r.get("job_id"))}
        if self.seen is None:
            self.seen = {}
            changed = select(mine, None)[::-1]
        else:
            changed = sorted(
                (r for k, r in mine.items() if self.seen.get(k) != r.get("state")), key=_number
            )
        for run in changed:
            self.seen[str(run["run_id"])] = run.get("state")
            self.ctx.say(f"{_when(run)}  {run_line(run)}")
        for key, run in mine.items():
            self.seen.setdefault(key, run.get("state"))


def _when(run: Json) -> str:
    """When the run entered its state (else its schedule time), local with the zone."""
    times = run.get("times") or {}
    return render.absolute(render.epoch(times.get(run.get("state")) or run.get("schedule_time")))


def _watch_lines(ctx: Context, job_id: str | None) -> int:
    lines = Lines(ctx, job_id)
    feed = SummaryFeed(ctx.feeds, idle=REDRAW)
    filled = 0
    try:
        with contextlib.closing(iter(feed)) as updates:
            for kind in updates:
                if feed.snapshots != filled:
                    filled = feed.snapshots
                    _fill_in(ctx, feed, job_id)
                if kind is not None:
                    lines.show(feed.runs)
    except FeedUnavailable:
        pass
    while True:  # polling, without a feed
        lines.show({str(r["run_id"]): r for r in _latest(ctx, job_id)})
        ctx.sleep()


def _watch(ctx: Context, args: argparse.Namespace) -> int:
    target = args.target
    if target and _is_run(target) and not args.job:
        return _watch_run(ctx, arguments.run_id(target), args.once)
    job_id = resolve_job(ctx, target) if target else None
    try:
        if not (args.once or ctx.stdout_tty):
            return _watch_lines(ctx, job_id)
        return _watch_runs(ctx, job_id, args.once)
    except KeyboardInterrupt:  # the way to stop watching runs
        ctx.console.line()
        return 0


def register(commands: Commands) -> None:
    parser = commands.add(
        "watch",
        _watch,
        "live view of runs (of a job), or of one run until it finishes (then exit like wait)",
    )
    parser.add_argument("target", metavar="JOB|RUN", nargs="?", help="a job or a run id")
    parser.add_argument(
        "--job", action="store_true", help="read JOB|RUN as a job even if it looks like a run id"
    )
    parser.add_argument(
        "--once", action="store_true", help="show the current view once and exit (status 0)"
    )
