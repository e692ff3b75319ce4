"""`apsis agents` and `apsis status`: the agents the server knows, and the servers
sharing its store (who leads)."""

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


def _status(ctx: Context, args: argparse.Namespace) -> int:
    answer = ctx.client.servers()
    if args.json:
        ctx.print_json(answer)
    else:
        ctx.show(render.servers_view(answer, ctx.now()))
    return 0


def register(commands: Commands) -> None:
    commands.add("agents", _agents, "list agents: host, user, state, version, running", json=True)
    commands.add(
        "status", _status, "the servers: who leads, its epoch and lease, each one's role", json=True
    )
