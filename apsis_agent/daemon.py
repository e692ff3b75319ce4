"""The daemon (`apsis-agent serve`): epoch, recovery, HTTPS, delivery, drain and shutdown.

Started by `app.serve` after the spawner was forked and the state-dir lock taken.
The daemon looks for cgroups it may contain runs in and tells the spawner, in
the first line it writes it. Everything runs on one event loop; the background
loops (uvicorn, output scan, webhook delivery, idle watch) belong to one
TaskGroup and end together.

Signals: SIGTERM/SIGINT stop serving (programs keep running under their shims);
SIGHUP reloads keys, settings and the certificate after a bootstrap attached.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import getpass
import json
import logging
import os
import resource
import signal
import socket
import ssl
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import uvicorn

from apsis_agent import cgroups, spawner
from apsis_agent.api import Context, build_app
from apsis_agent.fence import Fence
from apsis_agent.outbox import Outbox
from apsis_agent.procs import Limits, Procs
from apsis_agent.sender import Delivery, Sender
from apsis_agent.spares import Spares
from apsis_agent.state import Keys, Settings, StateDir
from apsis_common import __version__, tls
from apsis_common.auth import Verifier
from apsis_common.protocol import AgentInfo
from apsis_common.serving import H11, KEEP_ALIVE

# The idle watch looks at least this often, whatever wakes it meanwhile.
IDLE_WATCH = 60.0
log = logging.getLogger(__name__)

# Set to `off` to contain runs by their process groups even where cgroups are possible.
CGROUPS_VARIABLE = "APSIS_AGENT_CGROUPS"


@dataclass(frozen=True)
class Options:
    """Command-line options of `serve`."""

    bind: str = "127.0.0.1"
    port: int | None = None
    idle_stop: float | None = None
    heartbeat: float = 5.0
    max_procs: int = 4096
    kill_orphans_after: float | None = None  # None: processes left behind may run on


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling (the daemon owns the signals) and
    without its 0.1 s tick: uvicorn wakes ten times a second to see whether it
    should exit and to date its answers; the daemon says when (`stop`), and its
    answers carry no Date header."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._exit = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    async def main_loop(self) -> None:
        await self.on_tick(0)  # the default headers, once
        await self._exit.wait()

    def stop(self) -> None:
        self.should_exit = True
        self._exit.set()


class _Notifications(asyncio.Protocol):
    """Lines of JSON from the shims, through the spawner's pipe."""

    def __init__(
        self, on_line: Callable[[dict[str, Any]], None], gone: tuple[asyncio.Event, ...]
    ) -> None:
        self._on_line = on_line
        self._gone = gone  # set when the spawner is gone
        self._buffer = b""

    def data_received(self, data: bytes) -> None:
        *lines, self._buffer = (self._buffer + data).split(b"\n")
        for line in lines:
            try:
                message = json.loads(line)
            except ValueError:
                log.error("bad line from the spawner: %r", line[:200])
                continue
            self._on_line(message)

    def connection_lost(self, exc: Exception | None) -> None:
        for event in self._gone:
            event.set()


def _listen(host: str, port: int | None, previous: int | None) -> socket.socket:
    """A listening socket; without an explicit port, try the previous one first."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose proto says
    # TCP, and without it every two-write answer waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port if port is not None else previous or 0))
    except OSError:
        if port is not None or not previous:
            sock.close()
            raise
        sock.bind((host, 0))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


class Daemon:
    """One running agent daemon."""

    def __init__(self, state: StateDir, options: Options, handle: spawner.Handle) -> None:
        self._state = state
        self._options = options
        self._handle = handle
        self._settings: Settings = state.load_settings()
        self._url_unsaved = False  # the leader's webhook is not in the settings file yet
        self._keys: Keys = state.load_keys()
        self._ssl = tls.server_context(state.cert_file, state.key_file)
        self._stopping = asyncio.Event()
        self._changed = asyncio.Event()  # something the idle watch cares about
        self._activity = 0  # batches of events acknowledged: the agent did something
        self._failed = False
        self.epoch = 0

    def config(self) -> tuple[Settings, Keys]:
        return self._settings, self._keys

    def reload(self) -> None:
        """Pick up what a bootstrap wrote: keys, settings, certificate."""
        try:
            self._settings = self._state.load_settings()
            self._keys = self._state.load_keys()
            self._ssl.load_cert_chain(self._state.cert_file, self._state.key_file)
        except (OSError, ValueError, ssl.SSLError) as exc:
            log.error("reload failed, keeping the previous configuration: %s", exc)
            return
        log.info("reloaded keys %s and settings", sorted(self._keys.all))

    def follow(self, webhook_url: str) -> None:
        """A new leader: its webhook takes the events from now on (and after a restart).

        A full disk does not stop the following: the URL is kept in memory and
        written with the leader's next notice (it sends one on every connection)."""
        settings = self._settings
        if webhook_url == settings.webhook_url and not self._url_unsaved:
            return
        self._settings = dataclasses.replace(settings, webhook_url=webhook_url)
        try:
            self._state.save_settings(settings.agent_id, webhook_url, settings.ca_pem)
        except OSError as exc:
            if not self._url_unsaved:
                log.error("events go to %s (a new leader); cannot persist it: %s", webhook_url, exc)
            self._url_unsaved = True
            return
        self._url_unsaved = False
        log.info("events go to %s from now on (a new leader)", webhook_url)

    def _acked(self, procs: Procs) -> None:
        procs.remove_reported()
        self._activity += 1
        self._changed.set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        state, options = self._state, self._options
        self.epoch = state.next_epoch()
        outbox = Outbox(state.outbox_file)
        spares = Spares(state.spare)
        spares.load()
        spawner_gone = asyncio.Event()
        to_spawner, _ = await loop.connect_write_pipe(
            asyncio.Protocol, os.fdopen(self._handle.requests, "wb", buffering=0)
        )
        layout = self._containment()
        settings = {"cgroups": layout.config() if layout is not None else None}
        to_spawner.write(json.dumps(settings).encode() + b"\n")
        orphans = options.kill_orphans_after
        keeper = cgroups.Keeper(layout, self.epoch, orphans=orphans) if layout else None
        if orphans is not None and layout is None:
            log.warning("no cgroups: processes runs leave behind are not killed (orphans)")

        def info() -> AgentInfo:
            return AgentInfo(
                agent_id=self._settings.agent_id,
                epoch=self.epoch,
                version=__version__,
                pid=os.getpid(),
                user=getpass.getuser(),
                hostname=socket.gethostname(),
                boot_id=spawner.read_boot_id(),
                running=procs.running,
                outbox_pending=outbox.pending,
                acked_seq=outbox.acked_seq,
                max_procs=procs.limits.max_procs,
                draining=procs.draining,
                instance=outbox.instance,
            )

        sender = Sender(
            outbox,
            self.config,
            self.epoch,
            Delivery(heartbeat=options.heartbeat),
            lambda: self._acked(procs),
            info,
        )
        procs = Procs(
            state.procs,
            outbox,
            to_spawner.write,
            spawner.read_boot_id(),
            Limits(max_procs=options.max_procs),
            sender.wake,
            spares,
            keeper,
        )
        await loop.connect_read_pipe(
            lambda: _Notifications(procs.on_notification, (spawner_gone, self._changed)),
            os.fdopen(self._handle.notifications, "rb", buffering=0),
        )
        if keeper is not None:
            keeper.start()
        adopted = procs.recover(self.epoch)
        procs.remove_reported()
        log.info("epoch %d: %d processes re-adopted", self.epoch, adopted)

        def drain() -> None:
            procs.draining = True
            self._changed.set()

        def follow(webhook_url: str) -> None:
            self.follow(webhook_url)
            sender.retry_now()

        verifier = Verifier(lambda: self._keys.all)
        fence = Fence(state.path / "leader_epoch")
        app = build_app(Context(procs, info, drain, follow), verifier, fence)
        sock = _listen(options.bind, options.port, state.read_int(state.port_file))
        config = uvicorn.Config(
            app,
            ssl_context_factory=lambda _config, _default: self._ssl,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=3,
            server_header=False,
            date_header=False,
            timeout_keep_alive=KEEP_ALIVE,
            http=H11,  # each answer in one write (apsis_common/serving.py)
        )
        server = _Server(config)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        try:
            async with asyncio.TaskGroup() as tasks:
                serving = tasks.create_task(server.serve(sockets=[sock]))
                workers = [
                    tasks.create_task(procs.scan()),
                    tasks.create_task(sender.run()),
                    tasks.create_task(self._watch_idle(procs, outbox, spawner_gone)),
                ]
                await _until(lambda: server.started or serving.done())
                port = sock.getsockname()[1]
                state.write_port(port)
                state.write_bind(options.bind)
                state.write_pid(os.getpid())
                log.info("listening on %s:%d (pid %d)", options.bind, port, os.getpid())
                await self._stopping.wait()
                log.info("stopping")
                server.stop()
                for worker in workers:
                    worker.cancel()
                await _close_connections(server, serving)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            procs.close()
            if keeper is not None:
                keeper.close()
                cgroups.release(keeper.layout)
            outbox.close()
            to_spawner.close()
            state.remove(state.pid_file)
        return 1 if self._failed else 0

    def _containment(self) -> cgroups.Layout | None:
        """The cgroups runs go in, if the host lets this agent make them (and
        `APSIS_AGENT_CGROUPS=off` does not say otherwise)."""
        if os.environ.get(CGROUPS_VARIABLE, "").lower() in ("0", "off", "no", "false"):
            layout, why = None, f"{CGROUPS_VARIABLE} is off"
        else:
            layout, why = cgroups.probe(self._state.path, (os.getpid(), self._handle.pid))
        if layout is None:
            log.info("runs are contained by their process groups (no cgroups: %s)", why)
        else:
            where = ", ".join(sorted(set(layout.bases.values())))
            log.info("runs are contained by cgroups (v%d) in %s", layout.version, where)
        return layout

    async def _watch_idle(self, procs: Procs, outbox: Outbox, spawner_gone: asyncio.Event) -> None:
        """Stop when drained, idle for `idle_stop`, or when the spawner is gone.

        Woken by what changes (an ack, a drain, the spawner's end), and by the
        deadline of `idle_stop`: an idle agent does not wake for nothing."""
        idle_since: float | None = None
        seen = self._activity
        while True:
            timeout = IDLE_WATCH
            idle_stop = self._options.idle_stop
            if idle_since is not None and idle_stop is not None:
                timeout = min(timeout, max(0.0, idle_since + idle_stop - time.monotonic()))
            # asyncio.timeout, not wait_for: in 3.11 wait_for can swallow a cancellation.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._changed.wait()
            self._changed.clear()
            if spawner_gone.is_set():
                log.error("the spawner exited: stopping (programs keep running)")
                self._failed = True
                self._stopping.set()
                return
            idle = procs.idle and outbox.pending == 0
            if procs.draining and idle:
                log.info("drained: no processes and the outbox is empty")
                self._stopping.set()
                return
            if self._activity != seen:  # busy since the last look, however briefly
                seen, idle_since = self._activity, None
            if idle_stop is None or not idle:
                idle_since = None
                continue
            now = time.monotonic()
            idle_since = idle_since or now
            if now - idle_since >= idle_stop:
                log.info("idle for %.0f s: stopping", idle_stop)
                self._stopping.set()
                return


async def _until(condition: Callable[[], bool]) -> None:
    """Wait for a condition that nothing signals (uvicorn's `started` flag)."""
    while not condition():  # noqa: ASYNC110 - uvicorn offers no event to wait on
        await asyncio.sleep(0.01)


async def _close_connections(server: uvicorn.Server, serving: asyncio.Task[None]) -> None:
    """Give open requests a moment, then drop idle keep-alive connections.

    A TLS close waits for the peer's close_notify, which an idle client never
    sends; without this, every stop would wait for uvicorn's graceful timeout.
    """
    await asyncio.wait({serving}, timeout=0.5)
    for connection in list(server.server_state.connections):
        transport = getattr(connection, "transport", None)
        if transport is not None:
            transport.abort()


def raise_fd_limit() -> None:
    """One pidfd per running process: use the hard limit on open files."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def run(state: StateDir, options: Options, handle: spawner.Handle) -> int:
    """Run the daemon until stopped; the exit status."""
    raise_fd_limit()
    return asyncio.run(Daemon(state, options, handle).run())
