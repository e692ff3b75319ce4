"""The websocket feeds against the real server and agent, with the `websockets` client."""

from __future__ import annotations

import base64
import json
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.harness import FINISHED, Server, running_server, wait_for

LINES = "for i in 1 2 3 4; do echo line $i; sleep 0.2; done"
JOBS = {
    "hello": "metadata: {labels: [greeting]}\nprogram: echo hello\n",
    "lines": f"program: {{type: shell, command: '{LINES}'}}\n",
    "flood": "program: head -c 24000000 /dev/urandom; sleep 0.5; echo done\n",
    "quiet": "program: sleep 600\n",
}
ORDER = ["new", "scheduled", "waiting", "starting", "running", "stopping", "success"]

Message = dict[str, Any]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("feeds"), JOBS) as server:
        yield server


def ws_url(server: Server, path: str) -> str:
    return server.url.replace("http://", "ws://") + "/api/v1" + path


def receive(ws: ClientConnection, timeout: float = 10.0) -> Message:
    message: Message = json.loads(ws.recv(timeout=timeout))
    return message


def receive_until(
    ws: ClientConnection, done: Callable[[Message], bool], timeout: float = 15.0
) -> list[Message]:
    """Messages up to and including the first for which `done` is true."""
    deadline = time.monotonic() + timeout
    got: list[Message] = []
    while True:
        got.append(receive(ws, max(0.01, deadline - time.monotonic())))
        if done(got[-1]):
            return got


def runs_of(message: Message) -> list[Message]:
    """The runs a message carries: one (run updates feed) or several (summary)."""
    if message["type"] == "runs":
        return list(message["runs"])
    return [message["run"]] if message["type"] == "run" else []


def run_is(run_id: str, states: set[str]) -> Callable[[Message], bool]:
    return lambda m: any(r["run_id"] == run_id and r["state"] in states for r in runs_of(m))


def test_summary_snapshot_then_live_transitions(server: Server) -> None:
    done = server.schedule("hello")
    server.wait_finished(done)
    with connect(ws_url(server, "/summary")) as ws:
        snapshot = receive(ws)
        assert snapshot["type"] == "snapshot"
        assert {j["job_id"] for j in snapshot["jobs"]} == set(JOBS)
        hello = next(j for j in snapshot["jobs"] if j["job_id"] == "hello")
        assert hello == server.get("/jobs/hello")["job"] | {"next_times": []}
        runs = {r["run_id"]: r for r in snapshot["runs"]}
        assert runs[done] == server.run(done) | {"elapsed": runs[done]["elapsed"]}
        assert [a["agent_id"] for a in snapshot["agents"]] == ["local"]

        run_id = server.schedule("hello")
        got = receive_until(ws, run_is(run_id, FINISHED))
        mine = [r for m in got for r in runs_of(m) if r["run_id"] == run_id]
        assert all(m["type"] == "runs" for m in got)
        states = [r["state"] for r in mine]
        assert states[-1] == "success"
        assert states == sorted(states, key=ORDER.index), states  # in lifecycle order
        assert mine[-1] == server.run(run_id)  # the REST shape, the same values


def test_reconnect_gets_a_fresh_snapshot(server: Server) -> None:
    with connect(ws_url(server, "/summary")) as ws:
        assert receive(ws)["type"] == "snapshot"
    run_id = server.schedule("hello")
    server.wait_finished(run_id)
    with connect(ws_url(server, "/summary")) as ws:
        snapshot = receive(ws)
        assert {r["run_id"]: r["state"] for r in snapshot["runs"]}[run_id] == "success"


def test_agent_changes_are_announced(server: Server) -> None:
    # The running count of the agent changes while a run is running.
    with connect(ws_url(server, "/summary")) as ws:
        receive(ws)
        run_id = server.schedule("quiet")
        got = receive_until(ws, lambda m: m["type"] == "agent" and m["agent"]["running"] == 1)
        assert got[-1]["agent"]["state"] == "connected"
        server.post(f"/runs/{run_id}/kill")
        receive_until(ws, lambda m: m["type"] == "agent" and m["agent"]["running"] == 0)


def output_of(messages: list[Message], start: int = 0) -> bytes:
    data = bytearray()
    for m in messages:
        if m["type"] == "output":
            assert m["offset"] == start + len(data), "output arrives in order, without gaps"
            data += base64.b64decode(m["data"])
    return bytes(data)


def test_run_updates_stream_output_then_close(server: Server) -> None:
    run_id = server.schedule("lines")
    server.wait_state(run_id, "running")
    got: list[Message] = []
    url = ws_url(server, f"/runs/{run_id}/updates?init=true")
    with connect(url) as ws, pytest.raises(ConnectionClosed) as closed:
        while True:
            got.append(receive(ws))
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000
    assert [m["type"] for m in got[:3]] == ["run", "log", "meta"]
    assert got[0]["run"]["state"] == "running"
    assert output_of(got) == b"line 1\nline 2\nline 3\nline 4\n"
    outputs = [m for m in got if m["type"] == "output" and m["data"]]
    assert len(outputs) >= 2, "output came live, in more than one piece"
    assert got[-1]["type"] == "run" and got[-1]["run"]["state"] == "success"
    log = [e["message"] for m in got if m["type"] == "log" for e in m["entries"]]
    assert log[-1] == "exited 0"
    assert any(m["type"] == "meta" and m["meta"].get("exit_code") == 0 for m in got)


def test_run_updates_tell_every_transition(server: Server) -> None:
    # Due in a moment: waiting and starting are entered in the same engine step.
    due = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 2))
    run_id = server.post("/runs", {"job_id": "hello", "time": due})["run"]["run_id"]
    got: list[Message] = []
    with connect(ws_url(server, f"/runs/{run_id}/updates")) as ws, pytest.raises(ConnectionClosed):
        while True:
            got.append(receive(ws))
    told = [m["run"] for m in got if m["type"] == "run"]
    final = server.run(run_id)
    entered = sorted(final["times"], key=final["times"].__getitem__)
    assert [r["state"] for r in told] == entered[entered.index("scheduled") :]
    assert entered[-4:] == ["waiting", "starting", "running", "success"]
    for run in told:  # each as it was: its state is its latest time
        assert max(run["times"], key=run["times"].__getitem__) == run["state"]
    assert told[-1] == final


def test_run_updates_of_a_finished_run_from_an_offset(server: Server) -> None:
    run_id = server.schedule("lines")
    server.wait_finished(run_id)
    with connect(ws_url(server, f"/runs/{run_id}/updates?offset=7")) as ws:
        got = receive_until(ws, lambda m: m["type"] == "output" and m["data"] != "")
        assert output_of(got, 7) == b"line 2\nline 3\nline 4\n"
        with pytest.raises(ConnectionClosed) as closed:
            receive(ws)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000
    with connect(ws_url(server, f"/runs/{run_id}/updates?offset=-7")) as ws:
        got = receive_until(ws, lambda m: m["type"] == "output")
        assert got[-1]["offset"] == 21 and output_of(got, 21) == b"line 4\n"


def test_unknown_run_is_closed_with_a_reason(server: Server) -> None:
    with (
        connect(ws_url(server, "/runs/r999999/updates")) as ws,
        pytest.raises(ConnectionClosed) as c,
    ):
        receive(ws)
    assert c.value.rcvd is not None and c.value.rcvd.code == 4404
    assert "r999999" in c.value.rcvd.reason


def stalled(server: Server, path: str) -> ClientConnection:
    """A client that never reads: a tiny receive buffer and one-message queue."""
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    return connect(
        ws_url(server, path),
        sock=sock,
        max_queue=1,
        compression=None,
        max_size=None,
        close_timeout=1,
    )


def test_slow_consumer_is_disconnected_without_slowing_others(server: Server) -> None:
    run_id = server.schedule("flood")
    with (
        stalled(server, f"/runs/{run_id}/updates") as slow,
        stalled(server, "/summary") as slow_summary,
        connect(ws_url(server, f"/runs/{run_id}/updates"), max_size=None) as fast,
        connect(ws_url(server, "/summary")) as watcher,
    ):
        receive(watcher)
        started = time.monotonic()
        got = receive_until(fast, run_is(run_id, FINISHED), 30)
        assert got[-1]["run"]["state"] == "success"
        assert len(output_of(got)) == 24_000_000 + len(b"done\n")
        # The engine keeps its pace while the slow client sits on a full socket.
        t0 = time.monotonic()
        quick = server.schedule("hello")
        receive_until(watcher, run_is(quick, FINISHED), 10)
        assert time.monotonic() - t0 < 3.0
        wait_for(lambda: "disconnecting a subscriber: too slow" in server.log(), 10, "the drop")
        # Only the client that fell behind was dropped; the other stalled one had little to read.
        received = 0
        with pytest.raises(ConnectionClosed):
            while True:
                slow.recv(timeout=10)
                received += 1
        assert received * 65536 < 24_000_000, "the slow client did not get everything"
        assert json.loads(slow_summary.recv(timeout=5))["type"] == "snapshot"
    assert time.monotonic() - started < 25
