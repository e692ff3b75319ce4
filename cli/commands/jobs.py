"""Jobs: `jobs` (tree), `job` (details, or `job new` for a file to start from),
`reload`, and offline `check-jobs`."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from rich.text import Text

from apsis_common.errors import Conflict
from cli import render
from cli.client import Json
from cli.commands import Commands, resolve_job
from cli.context import Context
from cli.errors import UsageError
from cli.template import job_template

RECENT_RUNS = 10


def _under(job_id: str, path: str) -> bool:
    path = path.strip("/")
    return not path or job_id == path or job_id.startswith(f"{path}/")


def _jobs(ctx: Context, args: argparse.Namespace) -> int:
    answer = ctx.client.jobs(label=args.label)
    path = args.path or ""
    jobs: list[Json] = [j for j in answer.get("jobs") or () if _under(str(j.get("job_id")), path)]
    errors: list[Json] = [
        e for e in answer.get("errors") or () if _under(str(e.get("job_id") or ""), path)
    ]
    if args.json:
        ctx.print_json({**answer, "jobs": jobs, "errors": errors})
        return 0
    if jobs:
        ctx.show(render.jobs_tree(jobs, title=path.strip("/") or "jobs"))
    else:
        ctx.warn("no jobs")
    if errors:
        ctx.show(Text("jobs that failed to load:", style="bold red"))
        ctx.show(render.job_errors_table(errors))
    return 0


def _job(ctx: Context, args: argparse.Namespace) -> int:
    if len(args.job) == 2 and args.job[0] == "new":
        return _new_job(ctx, args.job[1], Path(args.dir))
    if len(args.job) != 1:
        raise UsageError("expected `apsis job JOB` or `apsis job new NAME`")
    job_id = resolve_job(ctx, args.job[0])
    answer = ctx.client.job(job_id)
    if args.json:
        ctx.print_json(answer)
        return 0
    runs = ctx.client.job_runs(job_id, limit=RECENT_RUNS).get("runs") or []
    ctx.show(render.job_detail(answer["job"], runs, ctx.now()))
    if answer.get("errors"):
        ctx.show(render.kept_job_errors(answer["errors"]))
    return 0


def _new_job(ctx: Context, name: str, jobs_dir: Path) -> int:
    """Write a commented job file for job `name` under `jobs_dir`; never over a file."""
    job_id = name.strip().removesuffix(".yaml")
    parts = job_id.split("/")
    bad = any(p in ("", ".", "..") or p.startswith(".") for p in parts)
    if not job_id or bad or any(c < " " or c == "\x7f" for c in job_id):
        raise UsageError(f"expected a job id like demo/hello, got {name!r}")
    if job_id == "jobs":
        raise UsageError("jobs.yaml at the root is the jobs directory's configuration, not a job")
    path = jobs_dir.joinpath(*parts[:-1], f"{parts[-1]}.yaml")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with path.open("x") as file:
            file.write(job_template(job_id))
    except FileExistsError:
        raise Conflict(f"{path} exists already; not overwritten") from None
    ctx.say(f"wrote {path}: edit it, then check it with `apsis check-jobs {jobs_dir}`")
    return 0


def _reload(ctx: Context, args: argparse.Namespace) -> int:
    answer = ctx.client.reload()
    if args.json:
        ctx.print_json(answer)
    else:
        ctx.show(render.reload_summary(answer))
    return 1 if answer.get("errors") else 0


def _check_jobs(ctx: Context, args: argparse.Namespace) -> int:
    # The checker lives in the server package; run it apart so the CLI never imports it.
    calendars = ["--calendars", args.calendars] if args.calendars is not None else []
    result = subprocess.run(
        [sys.executable, "-m", "apsis_server.checkjobs", *calendars, "--", args.dir],
        capture_output=True,
        check=False,
    )
    sys.stdout.flush()
    sys.stdout.buffer.write(result.stdout)
    sys.stdout.buffer.flush()
    sys.stderr.flush()
    sys.stderr.buffer.write(result.stderr)
    sys.stderr.buffer.flush()
    return result.returncode


def register(commands: Commands) -> None:
    parser = commands.add("jobs", _jobs, "list jobs as a tree by path", json=True)
    parser.add_argument("path", metavar="PATH", nargs="?", help="only jobs under this path")
    parser.add_argument("--label", metavar="L", help="only jobs with this label")

    parser = commands.add(
        "job",
        _job,
        "show a job: program, schedules, conditions, actions, recent runs;"
        " `job new NAME` writes a commented job file to start from",
        json=True,
    )
    parser.add_argument(
        "job", metavar="JOB", nargs="+", help="job id, unique prefix, or fuzzy words; or new NAME"
    )
    parser.add_argument(
        "--dir", metavar="DIR", default=".", help="with `new`: the jobs directory (default: .)"
    )

    commands.add("reload", _reload, "reload job files on the server", json=True)

    parser = commands.add("check-jobs", _check_jobs, "validate a jobs directory offline")
    parser.add_argument("dir", metavar="DIR", help="jobs directory")
    parser.add_argument(
        "--calendars",
        metavar="CALDIR",
        help="directory of named calendar files (the server's calendars: setting)",
    )
