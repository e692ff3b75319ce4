"""Comparing the server's runs with an agent's processes after a (re)connection.

| both know it | continue (the agent resends what was not acked) |
| only the server, run starting | ask again: starts are idempotent by proc id |
| only the server, run running | the run errors: the agent has no such process |
| only the agent, no unfinished run | stop it if it runs, then delete it |

Asking again is safe only while the agent keeps its state: a start carries the
agent's event sequence it was first sent to (agents/dispatch.py), and an agent
whose state was reset since refuses it (the run ends `error`, never started twice).
"""

from __future__ import annotations

import logging

from apsis_common import protocol as p
from apsis_common.errors import ApsisError, Unavailable
from apsis_common.states import State
from apsis_server.agents.client import AgentClient
from apsis_server.agents.dispatch import Command, CommandKind
from apsis_server.core import lifecycle
from apsis_server.engine.engine import Engine

log = logging.getLogger(__name__)


async def reconcile(engine: Engine, agent_id: str, client: AgentClient) -> None:
    """Bring the engine's view of `agent_id`'s processes in line with the agent's."""
    try:
        client.instance = (await client.info()).instance
        procs = {s.proc_id: s for s in await client.procs()}
    except ApsisError as exc:
        log.warning("agent %s: cannot list processes: %s", agent_id, exc)
        return
    for run in list(engine.runs.values()):
        if run.agent_id != agent_id or run.proc_id is None or run.proc_id in procs:
            continue
        if run.state == State.STARTING:
            engine.resend_start(run)
        elif run.state in (State.RUNNING, State.STOPPING):
            why = f"agent {agent_id} has no process {run.proc_id}"
            engine.apply(run, lifecycle.ProcLost(why))
    for proc_id, summary in procs.items():
        if engine.run_for(proc_id) is not None:
            continue
        if summary.state in ("starting", "running"):
            log.warning("agent %s: stopping %s, which no run owns", agent_id, proc_id)
            engine.send(agent_id, Command(CommandKind.STOP, proc_id, p.StopRequest()))
        else:
            engine.send(agent_id, Command(CommandKind.DELETE, proc_id))
    try:
        engine.commit()
    except Unavailable as exc:
        # The store is full or read-only: the engine keeps all this and writes it (and
        # then sends what waits on it) once it can. Not a failed connection.
        log.warning("agent %s: reconciled; written once the store is writable: %s", agent_id, exc)
