"""Runs: `runs` (listing), `run` (one run and its log), `schedule` and `adhoc`."""

from __future__ import annotations

import argparse

from apsis_common.errors import ApsisError, NotFound
from cli import arguments, render
from cli.client import Json
from cli.commands import Commands, resolve_job, run_line
from cli.commands.follow import Follow, follow_run, outcome
from cli.context import Context
from cli.errors import UsageError

# The most runs the server gives in one page.
PAGE_LIMIT = 1000


def _list_runs(ctx: Context, args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise UsageError("--limit must be at least 1")
    # A folder (`demo/`) names the runs of every job in it.
    folder = args.job if args.job and args.job.endswith("/") else None
    job_id = resolve_job(ctx, args.job) if args.job and not folder else None
    filters: dict[str, str | int | None] = {
        "job_id": job_id,
        "job": f"/{folder.lstrip('/')}" if folder else None,
        "state": arguments.states(args.state) if args.state else None,
        "label": args.label,
        "since": arguments.when(args.since, ctx.now(), past=True) if args.since else None,
        "until": arguments.when(args.until, ctx.now(), past=True) if args.until else None,
        "args": ",".join(args.args) if args.args else None,
    }
    runs: list[Json] = []
    cursor: str | None = None
    while len(runs) < args.limit:
        limit = min(PAGE_LIMIT, args.limit - len(runs))
        answer = ctx.client.runs(**filters, limit=limit, before=cursor)
        runs += answer.get("runs") or []
        cursor = answer.get("next")
        if not cursor or not answer.get("runs"):
            break
    runs = runs[: args.limit]
    if args.json:
        ctx.print_json({"runs": runs, "next": cursor})
    elif runs:
        ctx.show(render.runs_table(runs, ctx.now(), times=args.times))
    else:
        ctx.warn("no runs")
    return 0


def _show_run(ctx: Context, args: argparse.Namespace) -> int:
    rid = arguments.run_id(args.run)
    answer = ctx.client.run(rid)
    run, program = answer["run"], answer.get("program")
    log = ctx.client.run_log(rid).get("log") or []
    try:
        meta = ctx.client.run_meta(rid).get("meta")
    except NotFound:  # a run that never started may have no metadata
        meta = None
    try:
        deps: Json | None = ctx.client.run_dependencies(rid)
    except ApsisError:  # an older server, without the dependencies view
        deps = None
    if args.json:
        ctx.print_json(
            {"run": run, "program": program, "log": log, "meta": meta, "dependencies": deps}
        )
        return 0
    ctx.show(render.run_detail(run, log, meta, ctx.now(), program))
    for dep in (deps or {}).get("waits_for", []):
        args_text = " ".join(f"{k}={v}" for k, v in sorted(dep["args"].items()))
        found = ", ".join(f"{r['run_id']} {r['state']}" for r in dep["runs"]) or "no run yet"
        mark = "met" if dep["satisfied"] else "waiting"
        ctx.show(f"depends on {dep['job_id']} {args_text} ({mark}): {found}")
    if (deps or {}).get("waited_by"):
        ctx.show("waited on by " + ", ".join(deps["waited_by"]))  # type: ignore[index]
    return 0


def _create(ctx: Context, args: argparse.Namespace, body: Json) -> int:
    """POST the run, then report it, or follow it and exit with its outcome."""
    body["time"] = arguments.when(args.time, ctx.now(), past=False) if args.time else None
    run: Json = ctx.client.create_run(body)["run"]
    if not (args.wait or args.output):
        if args.json:
            ctx.print_json({"run": run})
        else:
            ctx.say(run_line(run))
        return 0
    # The output is written as it comes; the spinner shows while waiting.
    how = Follow(output=0 if args.output else None, progress=True)
    run = follow_run(ctx, str(run["run_id"]), how)
    if args.output:
        if outcome(run) != 0:  # the output alone would not say what went wrong
            ctx.warn(run_line(run))
    elif args.json:
        ctx.print_json({"run": run})
    else:
        ctx.say(run_line(run))
    return outcome(run)


def _schedule(ctx: Context, args: argparse.Namespace) -> int:
    run_args = arguments.run_args(args.args)
    job_id = resolve_job(ctx, args.job)
    return _create(ctx, args, {"job_id": job_id, "args": run_args})


def _adhoc(ctx: Context, args: argparse.Namespace) -> int:
    program: Json = {"type": "shell", "command": args.command}
    if args.host:
        program["host"] = args.host
    return _create(ctx, args, {"program": program})


def _creation_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--time", metavar="T", help="when to run: ISO time, local '2026-11-26 21:00', or '+10m'"
    )
    parser.add_argument(
        "--wait", action="store_true", help="wait for the run; exit with its outcome like `wait`"
    )
    parser.add_argument(
        "--output", action="store_true", help="wait for the run, then print its output"
    )


def register(commands: Commands) -> None:
    parser = commands.add("runs", _list_runs, "list runs, newest first", json=True)
    parser.add_argument(
        "job", metavar="JOB", nargs="?", help="only this job's runs (a folder: `demo/`)"
    )
    parser.add_argument("--state", metavar="S", help="only runs in these states (a,b)")
    parser.add_argument("--since", metavar="T", help="only runs since T (ISO time or '1h')")
    parser.add_argument("--until", metavar="T", help="only runs until T")
    parser.add_argument("--label", metavar="L", help="only runs with this label")
    parser.add_argument(
        "--args", metavar="ARG=VALUE", action="append", help="only runs with this arg (repeatable)"
    )
    parser.add_argument("--times", action="store_true", help="show the time of every state")
    parser.add_argument("--limit", metavar="N", type=int, default=50, help="at most N runs")

    parser = commands.add("run", _show_run, "show a run, its metadata and its run log", json=True)
    parser.add_argument("run", metavar="RUN", help="run id (r42 or 42)")

    parser = commands.add(
        "schedule", _schedule, "create a run of a job (now by default)", json=True
    )
    parser.add_argument("job", metavar="JOB", help="job id, unique prefix, or fuzzy words")
    parser.add_argument("args", metavar="ARG=VALUE", nargs="*", help="the run's arguments")
    _creation_options(parser)

    parser = commands.add("adhoc", _adhoc, "run an ad-hoc shell command", json=True)
    parser.add_argument("command", metavar="COMMAND", help="shell command line")
    parser.add_argument("--host", metavar="H", help="the host to run it on")
    _creation_options(parser)
