"""The client side of the server's websocket feeds (docs/api.md): connect, decode, resume.

Theory of operation. `FeedClient.open` connects with the same token and CA as the
REST client and raises `FeedUnavailable` when the socket cannot be opened (no
server, a proxy that does not pass websockets, a refused upgrade), so a command
can fall back to polling. `RunFeed` and `SummaryFeed` turn a feed into typed
updates and keep what they have seen; when a connection drops they reconnect
(a run feed from the end of the output it has, the summary for a fresh
snapshot) and hide the repetition, so consumers see each output byte and log
entry once. Reading waits at most `idle` seconds, then yields `None`, so a live
view can redraw its clock.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import socket
import threading
import time
from collections.abc import Generator, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

from websockets.exceptions import ConnectionClosed, WebSocketException
from websockets.proxy import get_proxy
from websockets.sync.client import ClientConnection, connect
from websockets.uri import parse_uri

from apsis_common.errors import ApsisError, BadInput, NotFound
from cli.client import API, auth_headers, run_path, ssl_context
from cli.errors import FeedUnavailable

Json = dict[str, Any]

CLOSE_FINISHED = 1000
CLOSE_BAD_REQUEST = 4400
CLOSE_NO_RUN = 4404
# An output offset past any output: the run feed then sends only new output.
NO_OLD_OUTPUT = 1 << 62
# Snapshots hold every unfinished run and jobs: allow big messages.
MAX_MESSAGE = 256 * 1024 * 1024
# After a drop, how many times to try again (with a growing pause) before polling.
RECONNECTS = 5
RECONNECT_PAUSE = 0.2
# How long closing a feed waits for the server's answer to its close frame (the
# library's default is 10 s): Ctrl-C ends `apsis watch` within this, whatever the
# server is doing.
CLOSE_TIMEOUT = 1.0


def feed_url(base_url: str, path: str, params: Mapping[str, str | int] | None = None) -> str:
    """`ws://host/api/v1/...` (or `wss://`) for the server at `base_url`."""
    scheme, sep, rest = base_url.partition("://")
    ws = "wss" if scheme == "https" else "ws"
    query = f"?{urlencode(params)}" if params else ""
    return f"{ws}{sep}{rest}{path}{query}"


class FeedClient:
    """Opens websocket feeds on one server, with the REST client's token and CA."""

    def __init__(
        self, base_url: str, token: str | None = None, ca: str | None = None, timeout: float = 10.0
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.headers = auth_headers(token)
        self.ssl = ssl_context(self.base_url, ca)
        self.timeout = timeout

    def open(self, path: str, params: Mapping[str, str | int] | None = None) -> ClientConnection:
        """A connection to the feed at `path`; `FeedUnavailable` if it cannot be opened
        within `timeout` seconds (a second more at worst, see `_guarded`)."""
        url = feed_url(self.base_url, path, params)
        try:
            # Through a proxy (the environment's, as for REST requests) websockets
            # dials itself; otherwise the connection is ours, to guard.
            sock = None if get_proxy(parse_uri(url)) else _connect(url, self.timeout)
            with _guarded(sock, self.timeout + 1.0):
                return connect(
                    url,
                    sock=sock,
                    additional_headers=self.headers,
                    ssl=self.ssl,
                    open_timeout=self.timeout,
                    close_timeout=CLOSE_TIMEOUT,
                    max_size=MAX_MESSAGE,
                )
        except (WebSocketException, OSError, TimeoutError) as exc:
            reason = str(exc) or type(exc).__name__
            raise FeedUnavailable(f"cannot open the feed {url}: {reason}") from exc


def _connect(url: str, timeout: float) -> socket.socket:
    target = urlsplit(url)
    port = target.port or (443 if target.scheme == "wss" else 80)
    return socket.create_connection((target.hostname, port), timeout=timeout)


@contextlib.contextmanager
def _guarded(sock: socket.socket | None, deadline: float) -> Iterator[None]:
    """Shut `sock` down if the block outlives `deadline` seconds, and close it if it fails.

    When the server answers TLS but not the upgrade, websockets' own timeout
    leaves its reader thread blocked in an SSL read that closing the socket does
    not wake, and waits for that thread forever. Shutting the connection down
    through a second descriptor of the same socket does wake it.
    """
    if sock is None:
        yield
        return
    guard = sock.dup()
    timer = threading.Timer(deadline, _shut_down, (guard,))
    timer.start()
    try:
        yield
    except BaseException:
        sock.close()
        raise
    finally:
        timer.cancel()
        guard.close()


def _shut_down(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def receive(ws: ClientConnection, idle: float | None) -> Json | None:
    """The next message, or None after `idle` seconds without one."""
    try:
        text = ws.recv(timeout=idle)
    except TimeoutError:
        return None
    try:
        message = json.loads(text)
    except ValueError:
        raise ApsisError("the server sent a feed message that is not JSON") from None
    if not isinstance(message, dict):
        raise ApsisError("the server sent a feed message that is not an object")
    return message


def ended(exc: ConnectionClosed) -> bool:
    """True if the server closed the feed because it is over; False for a drop.

    Closes that say the request is wrong raise the matching error.
    """
    code = exc.rcvd.code if exc.rcvd is not None else None
    reason = exc.rcvd.reason if exc.rcvd is not None else ""
    if code == CLOSE_NO_RUN:
        raise NotFound(reason or "no such run")
    if code == CLOSE_BAD_REQUEST:
        raise BadInput(reason or "bad feed request")
    return code == CLOSE_FINISHED


def _dial(
    client: FeedClient,
    path: str,
    params: Mapping[str, str | int] | None,
    attempt: int,
    connected: bool,
) -> ClientConnection | None:
    """Open a feed for the `attempt`th time in a row (0 the first); None: try again.

    A feed never opened fails at once (the caller polls instead); after a drop,
    each attempt pauses a little longer, and after `RECONNECTS` the feed is given up.
    """
    if attempt > RECONNECTS:
        raise FeedUnavailable(f"the feed {path} keeps dropping")
    if attempt:
        time.sleep(RECONNECT_PAUSE * attempt)
    try:
        return client.open(path, params)
    except FeedUnavailable:
        if not connected:
            raise
        return None


# -- one run ----------------------------------------------------------------------


@dataclass(frozen=True)
class RunChanged:
    """The run's summary, after a transition (or as it is, on connect)."""

    run: Json


@dataclass(frozen=True)
class LogAdded:
    """Run log entries not seen before."""

    entries: list[Json]


@dataclass(frozen=True)
class MetaChanged:
    """Metadata keys that changed."""

    meta: Json


@dataclass(frozen=True)
class OutputAdded:
    """Output bytes at `offset`, each byte given once, in order (maybe empty)."""

    offset: int
    data: bytes


RunUpdate = RunChanged | LogAdded | MetaChanged | OutputAdded


class RunFeed:
    """One run's updates until it finishes, across dropped connections.

    `offset` is where output `name` (merged, stdout, stderr) should start (None:
    only output written from now on) and, as updates arrive, the end of the output
    given so far. `run`, `log` and
    `meta` hold what is known; `ready` turns true once the run's state as of the
    first connection has arrived; `done` once the server said the run finished.
    """

    def __init__(
        self,
        client: FeedClient,
        run_id: str,
        offset: int | None = 0,
        idle: float | None = None,
        name: str = "merged",
    ) -> None:
        self.client = client
        self.run_id = run_id
        self.offset = offset
        self.name = name
        self.idle = idle
        self.run: Json | None = None
        self.log: list[Json] = []
        self.meta: Json = {}
        self.ready = False
        self.done = False

    def __iter__(self) -> Generator[RunUpdate | None, None, None]:
        """Updates, and None after `idle` quiet seconds; `FeedUnavailable` if the
        feed cannot be (re)opened."""
        path = f"{run_path(self.run_id)}/updates"
        attempt = 0
        while not self.done:
            offset = NO_OLD_OUTPUT if self.offset is None else self.offset
            params: dict[str, str | int] = {"init": "true", "offset": offset}
            if self.name != "merged":
                params["name"] = self.name
            ws = _dial(self.client, path, params, attempt, self.run is not None)
            attempt += 1
            if ws is None:
                continue
            with ws:
                for update in self._connection(ws):
                    attempt = 0
                    yield update

    def _connection(self, ws: ClientConnection) -> Generator[RunUpdate | None, None, None]:
        first_log = True
        try:
            while True:
                message = receive(ws, self.idle)
                if message is None:
                    yield None
                    continue
                update = self.apply(message, first_log)
                first_log = first_log and message.get("type") != "log"
                if update is not None:
                    yield update
        except ConnectionClosed as exc:
            self.done = ended(exc)

    def apply(self, message: Json, first_log: bool) -> RunUpdate | None:
        """Take in one message; the update it makes, None if nothing new.

        `first_log`: no log message has come on this connection yet, so a log
        message is the whole log again.
        """
        kind = message.get("type")
        if kind == "run" and isinstance(message.get("run"), dict):
            self.run = message["run"]
            return RunChanged(message["run"])
        if kind == "log":
            entries = list(message.get("entries") or [])
            # On each connection the first log message is the whole log again.
            new = entries[len(self.log) :] if first_log else entries
            self.log += new
            return LogAdded(new) if new else None
        if kind == "meta" and isinstance(message.get("meta"), dict):
            self.meta.update(message["meta"])
            return MetaChanged(message["meta"])
        if kind == "output":
            return self._output(message)
        return None  # a message type this client does not know

    def _output(self, message: Json) -> OutputAdded | None:
        try:
            start = int(message.get("offset", 0))
            data = base64.b64decode(str(message.get("data") or ""), validate=True)
        except (ValueError, binascii.Error):
            raise ApsisError("the server sent an output message that does not decode") from None
        if self.offset is None:
            self.offset = start
        # After a reconnect the server may repeat bytes already given: skip them.
        skip = max(0, self.offset - start)
        if skip >= len(data) and (data or self.ready):
            return None
        data = data[skip:]
        self.offset = start + skip + len(data)
        self.ready = True
        return OutputAdded(start + skip, data)


# -- the summary --------------------------------------------------------------------


class SummaryFeed:
    """The summary feed as a current picture: runs by id, jobs, agents.

    Iterating yields the type of each message applied (`snapshot`, `run`, `job`,
    `job_removed`, `agent`), or None after `idle` quiet seconds. A dropped
    connection is reopened and its fresh snapshot replaces the picture.
    """

    def __init__(self, client: FeedClient, idle: float | None = None) -> None:
        self.client = client
        self.idle = idle
        self.runs: dict[str, Json] = {}
        self.jobs: dict[str, Json] = {}
        self.agents: dict[str, Json] = {}
        self.time: str | None = None  # the server's clock at the last snapshot
        self.snapshots = 0

    def __iter__(self) -> Generator[str | None, None, None]:
        attempt = 0
        while True:
            ws = _dial(self.client, f"{API}/summary", None, attempt, self.snapshots > 0)
            attempt += 1
            if ws is None:
                continue
            with ws:
                try:
                    while True:
                        message = receive(ws, self.idle)
                        kind = None if message is None else self._apply(message)
                        attempt = 0
                        yield kind
                except ConnectionClosed as exc:
                    ended(exc)  # the summary has no end: any close is a drop

    def _apply(self, message: Json) -> str | None:
        kind = message.get("type")
        if kind == "snapshot":
            self.snapshots += 1
            self.time = message.get("time")
            self.runs = {str(r["run_id"]): r for r in message.get("runs") or ()}
            self.jobs = {str(j["job_id"]): j for j in message.get("jobs") or ()}
            self.agents = {_agent_key(a): a for a in message.get("agents") or ()}
        elif kind == "runs" and isinstance(message.get("runs"), list):
            for run in message["runs"]:
                if isinstance(run, dict):
                    self.runs[str(run["run_id"])] = run
        elif kind == "job" and isinstance(message.get("job"), dict):
            self.jobs[str(message["job"]["job_id"])] = message["job"]
        elif kind == "job_removed":
            self.jobs.pop(str(message.get("job_id")), None)
        elif kind == "agent" and isinstance(message.get("agent"), dict):
            self.agents[_agent_key(message["agent"])] = message["agent"]
        else:
            return None
        return str(kind)


def _agent_key(agent: Mapping[str, Any]) -> str:
    return str(agent.get("agent_id") or f"{agent.get('user')}@{agent.get('host')}")
