"""`apsis check`: the sanity checker's findings (jobs with nothing scheduled, runs
overdue or started late, silent agents, runs without a process, failing jobs)."""

from __future__ import annotations

import argparse

from cli import render
from cli.commands import Commands
from cli.context import Context


def _check(ctx: Context, args: argparse.Namespace) -> int:
    answer = ctx.client.checks()
    findings = answer.get("findings") or []
    if args.json:
        ctx.print_json(answer)
    elif answer.get("time") is None:
        ctx.warn("this server stands by: the leader checks (see apsis status)")
    elif findings:
        ctx.show(render.findings_table(findings, ctx.client.base_url))
    else:
        ctx.say("nothing found")
    return 1 if any(f.get("severity") == "error" for f in findings) else 0


def register(commands: Commands) -> None:
    commands.add(
        "check",
        _check,
        "what looks wrong: jobs with nothing scheduled, runs overdue or late, silent"
        " agents, runs without a process, failing jobs (exit 1 on an error finding)",
        json=True,
    )
