"""`apsis watch`: a live view of runs, or of one run until it finishes (polling for now)."""

from __future__ import annotations

import argparse

from rich.console import Group, RenderableType
from rich.live import Live
from rich.text import Text

from cli import arguments, render
from cli.client import Json
from cli.commands import Commands, resolve_job
from cli.commands.wait import finished, outcome
from cli.context import Context
from cli.errors import UsageError

WATCH_LIMIT = 30


def _is_run(text: str) -> bool:
    try:
        arguments.run_id(text)
    except UsageError:
        return False
    return True


def _run_view(ctx: Context, rid: str) -> tuple[RenderableType, Json]:
    run: Json = ctx.client.run(rid)["run"]
    log = ctx.client.run_log(rid).get("log") or []
    return render.run_detail(run, log, None, ctx.now()), run


def _runs_view(ctx: Context, job_id: str | None) -> RenderableType:
    runs = ctx.client.runs(job_id=job_id, limit=WATCH_LIMIT).get("runs") or []
    title = Text(f"runs of {job_id}" if job_id else "runs", style="bold")
    return Group(title, render.runs_table(runs, ctx.now()))


def _watch(ctx: Context, args: argparse.Namespace) -> int:
    target = args.target
    if target and _is_run(target) and not args.job:
        rid = arguments.run_id(target)
        view, run = _run_view(ctx, rid)
        with Live(view, console=ctx.console, auto_refresh=False) as live:
            while not finished(run):
                ctx.sleep()
                view, run = _run_view(ctx, rid)
                live.update(view, refresh=True)
        return outcome(run)
    job_id = resolve_job(ctx, target) if target else None
    try:
        with Live(_runs_view(ctx, job_id), console=ctx.console, auto_refresh=False) as live:
            while True:
                ctx.sleep()
                live.update(_runs_view(ctx, job_id), refresh=True)
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
