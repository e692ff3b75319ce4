"""The keeper survives what it did not foresee while connecting an agent."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from apsis_common import protocol as p
from apsis_common.auth import Key
from apsis_common.tls import new_ca
from apsis_server.agents import keeper as keeper_module
from apsis_server.agents.conn import AgentConn
from apsis_server.agents.dispatch import Dispatcher
from apsis_server.agents.keeper import Keeper
from apsis_server.agents.settings import AgentSettings
from tests.harness import run_async
from tests.reports import RecordedReports


def test_an_unforeseen_error_while_connecting_is_a_failed_attempt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = 0

    async def broken_bootstrap(*args: object, **kwargs: object) -> p.BootstrapReady:
        nonlocal calls
        calls += 1
        raise RuntimeError("handler is closed")  # what uvloop raised when ssh had gone

    monkeypatch.setattr(keeper_module, "bootstrap", broken_bootstrap)
    reports = RecordedReports()
    refused = reports.refusals

    async def scenario() -> None:
        settings = AgentSettings(attempts=2, retry_delay=0.01)
        keeper = Keeper(
            settings,
            tmp_path,
            new_ca(),
            lambda: "https://127.0.0.1:1/agent/v1/events",
            "test",
            clock=lambda: 0.0,
            rng=random.Random(1),
            epoch=lambda: None,
            local_id="local",
        )
        conn = AgentConn("local", "127.0.0.1", None, Key.generate(), Dispatcher("local"))
        conn.pending["r1.1"] = p.StartProc("r1.1", p.ProcSpec(argv=("true",)))
        conn.wanted.set()
        task = asyncio.create_task(keeper.keep(conn, reports))
        for _ in range(200):
            if refused:
                break
            await asyncio.sleep(0.01)
        assert not task.done(), "the keeper must keep going"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert conn.state == "failed" and "internal error while connecting" in (conn.error or "")

    run_async(scenario)
    assert calls == 2
    assert refused == [("r1.1", refused[0][1])] and "handler is closed" in refused[0][1]
