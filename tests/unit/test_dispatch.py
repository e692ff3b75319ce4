"""The dispatcher keeps sending to an agent whatever goes wrong on the way."""

from __future__ import annotations

import asyncio

import pytest

from apsis_common import protocol as p
from apsis_common.auth import Key
from apsis_common.errors import Unavailable
from apsis_common.tls import new_ca
from apsis_server.dispatch import AgentClient, Dispatcher
from tests.harness import run_async


class FlakyClient:
    """Fails its first start like a client closed under it, then accepts."""

    def __init__(self) -> None:
        self.calls = 0
        self.started: list[str] = []

    async def start(self, procs: list[p.StartProc]) -> tuple[p.StartResult, ...]:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("Cannot send a request, as the client has been closed.")
        self.started += [proc.proc_id for proc in procs]
        return tuple(p.StartResult(proc.proc_id, "accepted") for proc in procs)


def test_an_unexpected_error_is_retried_not_the_end_of_the_dispatcher() -> None:
    accepted: list[str] = []

    async def scenario() -> None:
        dispatcher = Dispatcher(
            "a", lambda proc_id, error: None, lambda rs: accepted.extend(r.proc_id for r in rs)
        )
        client = FlakyClient()
        dispatcher.connected(client)  # type: ignore[arg-type]
        task = asyncio.create_task(dispatcher.run())
        dispatcher.start(p.StartProc("r1.1", p.ProcSpec(argv=("true",))))
        for _ in range(200):
            if accepted:
                break
            await asyncio.sleep(0.01)
        assert not task.done(), "the dispatcher must keep running"
        task.cancel()
        assert client.calls == 2 and client.started == ["r1.1"]

    run_async(scenario)
    assert accepted == ["r1.1"]


def test_a_closed_client_is_unavailable() -> None:
    """A request on a client closed by a reconnection is Unavailable (retried)."""

    async def scenario() -> None:
        client = AgentClient("https://127.0.0.1:9", Key.generate(), new_ca().cert_pem)
        await client.close()
        with pytest.raises(Unavailable, match="closed"):
            await client.info()

    run_async(scenario)
