"""The dispatcher keeps sending to an agent whatever goes wrong on the way."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import pytest

from apsis_common import codec
from apsis_common import protocol as p
from apsis_common.auth import Key
from apsis_common.errors import BadInput, Unavailable
from apsis_common.http11 import Answer, Http11Client, never_sent
from apsis_common.tls import client_context, new_ca
from apsis_server.agents.client import AgentClient, reason
from apsis_server.agents.dispatch import Dispatcher
from tests.harness import run_async
from tests.reports import RecordedReports


class FlakyClient:
    """Fails its first start like a client closed under it, then accepts."""

    def __init__(self) -> None:
        self.calls = 0
        self.started: list[str] = []
        self.instance = ""

    async def start(self, procs: list[p.StartProc]) -> tuple[p.StartResult, ...]:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("Cannot send a request, as the client has been closed.")
        self.started += [proc.proc_id for proc in procs]
        return tuple(p.StartResult(proc.proc_id, p.StartStatus.ACCEPTED) for proc in procs)


def test_an_unexpected_error_is_retried_not_the_end_of_the_dispatcher() -> None:
    reports = RecordedReports()
    accepted = reports.acceptances

    async def scenario() -> None:
        dispatcher = Dispatcher("a")
        client = FlakyClient()
        dispatcher.connected(client)  # type: ignore[arg-type]
        task = asyncio.create_task(dispatcher.run(reports))
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
        client = AgentClient(
            "https://127.0.0.1:9", Key.generate(), new_ca().cert_pem, epoch=lambda: None
        )
        await client.close()
        with pytest.raises(Unavailable, match="closed"):
            await client.info()

    run_async(scenario)


class PickyClient:
    """An agent that cannot take one particular start: any batch holding it is
    refused whole, as a 413 or an encoding failure would be."""

    def __init__(self, bad: str) -> None:
        self.bad = bad
        self.batches: list[list[str]] = []
        self.instance = ""

    async def start(self, procs: list[p.StartProc]) -> tuple[p.StartResult, ...]:
        ids = [proc.proc_id for proc in procs]
        self.batches.append(ids)
        if self.bad in ids:
            raise BadInput("agent answered 413")
        return tuple(p.StartResult(proc_id, p.StartStatus.ACCEPTED) for proc_id in ids)


def test_a_start_the_agent_cannot_take_is_refused_alone() -> None:
    """One bad start in a batch of 100: it is refused with the reason, the other 99 are
    accepted, in a few requests and no retry loop."""
    reports = RecordedReports()
    accepted = reports.acceptances
    client = PickyClient("r37.1")

    async def scenario() -> None:
        dispatcher = Dispatcher("a")
        dispatcher.connected(client)  # type: ignore[arg-type]
        for i in range(100):
            dispatcher.start(p.StartProc(f"r{i}.1", p.ProcSpec(argv=("true",))))
        task = asyncio.create_task(dispatcher.run(reports))
        for _ in range(200):
            if len(accepted) + len(reports.refusals) == 100:
                break
            await asyncio.sleep(0.01)
        task.cancel()

    run_async(scenario)
    assert dict(reports.refusals) == {"r37.1": "start refused: agent answered 413"}
    assert sorted(accepted) == sorted(f"r{i}.1" for i in range(100) if i != 37)
    assert len(client.batches) <= 2 * 8, client.batches  # halving: ~2 log2(100)


def test_a_start_that_cannot_be_encoded_never_reaches_the_agent() -> None:
    async def scenario() -> None:
        client = AgentClient(
            "https://127.0.0.1:9", Key.generate(), new_ca().cert_pem, epoch=lambda: None
        )
        try:
            with pytest.raises(BadInput, match="cannot be sent"):
                await client.start([p.StartProc("r1.1", p.ProcSpec(argv=("echo", "\ud800")))])
            with pytest.raises(BadInput, match="over the agent's limit"):
                big = "x" * p.MAX_REQUEST_BYTES
                await client.start([p.StartProc("r1.1", p.ProcSpec(argv=("echo", big)))])
        finally:
            await client.close()

    run_async(scenario)


def test_a_withdrawn_start_is_never_sent() -> None:
    client = PickyClient("none")

    async def scenario() -> None:
        dispatcher = Dispatcher("a")
        dispatcher.start(p.StartProc("r1.1", p.ProcSpec(argv=("true",))))
        dispatcher.start(p.StartProc("r2.1", p.ProcSpec(argv=("true",))))
        dispatcher.withdraw("r1.1")
        dispatcher.connected(client)  # type: ignore[arg-type]
        task = asyncio.create_task(dispatcher.run(RecordedReports()))
        for _ in range(100):
            if client.batches:
                break
            await asyncio.sleep(0.01)
        task.cancel()

    run_async(scenario)
    assert client.batches == [["r2.1"]]


def test_an_agents_error_answer_is_read_not_shown_as_bytes() -> None:
    """The agent answers errors as msgpack `{"error": ...}`: the log and the run say
    the message, not the bytes."""
    body = codec.encode({"error": "no such process: r1.1"})
    assert reason(Answer(404, {"content-type": p.MSGPACK}, body)) == "no such process: r1.1"
    assert reason(Answer(502, {}, b"bad gateway")) == "bad gateway"


class SequencedClient:
    """An agent in event sequence `instance` that takes every start, or fails them
    as told (`fail`: the exception the request raises), recording what it got."""

    def __init__(self, instance: str, fail: BaseException | None = None) -> None:
        self.instance = instance
        self.fail = fail
        self.got: list[p.StartProc] = []

    async def start(self, procs: list[p.StartProc]) -> tuple[p.StartResult, ...]:
        self.got += procs
        if self.fail is not None:
            raise self.fail
        return tuple(p.StartResult(proc.proc_id, p.StartStatus.ACCEPTED) for proc in procs)


def _never_sent() -> OSError:
    """What the HTTP client raises when no connection opened and nothing was written."""

    async def refused() -> None:
        client = Http11Client("https://127.0.0.1:9", client_context(new_ca().cert_pem))
        await client.request("POST", "/procs", {})

    try:
        run_async(refused)
    except OSError as exc:
        assert never_sent(exc), exc
        return exc
    raise AssertionError("port 9 answered")


def _unavailable(cause: BaseException) -> Unavailable:
    exc = Unavailable("agent unreachable")
    exc.__cause__ = cause
    return exc


@pytest.mark.parametrize(
    ("failure", "stamp"),
    [
        (lambda: None, "A"),  # taken by the agent of sequence A
        (lambda: _unavailable(TimeoutError()), "A"),  # maybe taken: A may yet start it
        (lambda: _unavailable(ConnectionResetError()), "A"),  # A may have run it, then died
        (lambda: _unavailable(_never_sent()), "B"),  # nothing of it reached any agent
    ],
)
def test_a_start_carries_the_sequence_it_first_went_to(
    failure: Callable[[], BaseException | None], stamp: str
) -> None:
    """A start sent again after a reconnection carries the event sequence of the
    agent that (maybe) took it first, so an agent whose state was reset since
    refuses it; one that never left the server goes as new. (Chaos seed 20261208:
    an agent took a start, ran it and was wiped before answering; the start went
    again, unmarked, to the new agent, which ran it a second time.)"""

    async def send(dispatcher: Dispatcher, client: SequencedClient) -> None:
        dispatcher.connected(client)  # type: ignore[arg-type]
        with contextlib.suppress(Unavailable):
            await dispatcher._send_starts(client, RecordedReports())  # type: ignore[arg-type]

    async def scenario() -> None:
        dispatcher = Dispatcher("a")
        start = p.StartProc("r1.1", p.ProcSpec(argv=("true",)))
        dispatcher.start(start)
        first = SequencedClient("A", failure())
        await send(dispatcher, first)
        assert [s.instance for s in first.got] == ["A"]
        dispatcher.start(start)  # asked again (the reconciliation with a new agent)
        again = SequencedClient("B")
        await send(dispatcher, again)
        assert [s.instance for s in again.got] == [stamp]
        dispatcher.withdraw("r1.1")  # the run left `starting`: nothing kept of it
        assert dispatcher._first == {}

    run_async(scenario)


def test_a_start_withdrawn_in_flight_is_not_sent_again_when_that_request_fails() -> None:
    """The agent took a start, ran it and reported its end (the run left
    `starting` and its start was withdrawn while the request was in flight), then
    died before answering: the failed request is not sent again, or the restarted
    agent, which has removed the finished process's directory, starts it a second
    time (chaos campaign, PostgreSQL half, seed 20261208: r968)."""

    class DiesBeforeAnswering(SequencedClient):
        def __init__(self) -> None:
            super().__init__("A", _unavailable(ConnectionResetError()))
            self.asked = asyncio.Event()
            self.release = asyncio.Event()

        async def start(self, procs: list[p.StartProc]) -> tuple[p.StartResult, ...]:
            self.got += procs
            self.asked.set()
            await self.release.wait()
            assert self.fail is not None
            raise self.fail

    async def scenario() -> None:
        dispatcher = Dispatcher("a")
        dispatcher.start(p.StartProc("r1.1", p.ProcSpec(argv=("true",))))
        dispatcher.start(p.StartProc("r2.1", p.ProcSpec(argv=("true",))))
        first = DiesBeforeAnswering()
        dispatcher.connected(first)  # type: ignore[arg-type]
        sending = asyncio.create_task(dispatcher._send_starts(first, RecordedReports()))  # type: ignore[arg-type]
        await first.asked.wait()
        dispatcher.withdraw("r1.1")  # its end came by the webhook meanwhile
        first.release.set()
        with contextlib.suppress(Unavailable):
            await sending
        again = SequencedClient("A")
        dispatcher.connected(again)  # type: ignore[arg-type]
        await dispatcher._send_starts(again, RecordedReports())  # type: ignore[arg-type]
        assert [s.proc_id for s in again.got] == ["r2.1"], "r2.1 is still starting"

    run_async(scenario)
