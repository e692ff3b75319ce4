"""One agent as the server sees it: its connection record and the states it goes through."""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass, field

from apsis_common import protocol as p
from apsis_common.auth import Key
from apsis_server.agents.dispatch import Dispatcher
from apsis_server.agents.settings import StaticAgent
from apsis_server.agents.targets import Target


class AgentState(enum.StrEnum):
    """Where an agent's connection is: new (known, never wanted), connecting,
    connected, disconnected (was connected; silent or failing to re-bootstrap),
    failed (could not be bootstrapped), draining (being replaced by an agent of the
    server's version), stopped (known from an earlier server run and not connected
    now, or taken as stopped when idle)."""

    NEW = "new"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    FAILED = "failed"
    DRAINING = "draining"
    STOPPED = "stopped"


@dataclass
class AgentConn:
    """One agent as the server sees it; `state` says where its connection is."""

    agent_id: str
    host: str
    user: str | None
    key: Key
    dispatcher: Dispatcher
    state: AgentState = AgentState.CONNECTING
    epoch: int = 0
    version: str = ""
    pid: int = 0
    port: int = 0
    error: str | None = None
    last_heartbeat: float | None = None
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    target: Target = field(default_factory=lambda: Target("local", "127.0.0.1"))
    static: StaticAgent | None = None
    wanted: asyncio.Event = field(default_factory=asyncio.Event)
    pending: dict[str, p.StartProc] = field(default_factory=dict)
    failures: int = 0
    running: int | None = None  # as the agent reports it
    outbox_pending: int | None = None
    # When the agent last said what it is with a heartbeat, and what.
    info: tuple[float, p.AgentInfo] | None = None
    drained_version: str | None = None
    spawned: bool = False
    in_group: bool = False
