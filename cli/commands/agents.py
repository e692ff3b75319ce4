"""`apsis agents`: the agents the server knows and their state."""

from __future__ import annotations

import argparse

from cli import render
from cli.commands import Commands
from cli.context import Context


def _agents(ctx: Context, args: argparse.Namespace) -> int:
    answer = ctx.client.agents()
    if args.json:
        ctx.print_json(answer)
    elif answer.get("agents"):
        ctx.show(render.agents_table(answer["agents"], ctx.now()))
    else:
        ctx.warn("no agents")
    return 0


def register(commands: Commands) -> None:
    commands.add("agents", _agents, "list agents: host, user, state, version, running", json=True)
