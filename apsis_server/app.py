"""Building and running the server: `build_app(config)` and the `apsis-server` command."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import re
import socket
import sys
from collections.abc import AsyncIterator, Coroutine
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import Route

from apsis_common import __version__
from apsis_common.auth import Verifier
from apsis_common.errors import Unavailable
from apsis_common.serving import H11, KEEP_ALIVE
from apsis_common.tls import ensure_ca, server_context
from apsis_server.agents.events import PATH, webhook_route
from apsis_server.agents.facts import Facts
from apsis_server.agents.registry import Registry
from apsis_server.api import rest
from apsis_server.api.checks import Checker
from apsis_server.api.feeds.fanout import Feeds
from apsis_server.api.feeds.routes import feed_routes
from apsis_server.api.gate import Gate, allowed_hosts, allowed_origins, exposure
from apsis_server.api.https import check_trusted, issue_cert
from apsis_server.api.metrics import Metrics, WebhookTiming, metrics_endpoint
from apsis_server.api.tokens import TokenGuard
from apsis_server.config import Config, load_config
from apsis_server.core.extensions import Extensions
from apsis_server.core.planner import Horizon
from apsis_server.core.runs import Run
from apsis_server.core.templates import Templates
from apsis_server.engine.engine import Engine
from apsis_server.engine.housekeeping import Housekeeping
from apsis_server.engine.operations import Operations
from apsis_server.engine.ports import Settings as EngineSettings
from apsis_server.engine.restore import restore
from apsis_server.jobsdir import CalendarsLoad, JobsLoad, load_calendars_dir, load_jobs_dir
from apsis_server.leadership import Gate as LeaderGate
from apsis_server.leadership import Leadership
from apsis_server.plugins import load_extensions
from apsis_server.store.base import RunStore
from apsis_server.store.lease import PostgresLease, RunChanges
from apsis_server.store.postgres import PostgresStore
from apsis_server.store.sqlite import SqliteStore
from apsis_server.web import error_handlers, web_routes
from apsis_server.web.headers import SecurityHeaders

log = logging.getLogger("apsis_server")
# The summary feed sends the runs changed in this many seconds as one message.
SUMMARY_GATHER = 0.05


def webhook_url(config: Config) -> str:
    if config.public_url:
        return config.public_url.rstrip("/") + PATH
    scheme = "https" if config.tls_cert else "http"
    host = "127.0.0.1" if config.host in ("0.0.0.0", "") else config.host
    return f"{scheme}://{host}:{config.port}{PATH}"


def load_jobs(config: Config, extensions: Extensions) -> tuple[Templates, JobsLoad]:
    """The templates (with the named calendars and the plugins' template functions)
    and every job under the jobs directory."""
    calendars = load_calendars_dir(config.calendars) if config.calendars else CalendarsLoad()
    templates = Templates(extensions.helpers(calendars.calendars))
    loaded = load_jobs_dir(config.jobs, templates, calendars.calendars, extensions)
    errors = calendars.errors + loaded.errors
    for error in errors:
        log.error("job %s: %s: %s", error.path, error.key_path, error.message)
    return templates, JobsLoad(loaded.jobs, errors)


def build_app(config: Config) -> Starlette:
    """The whole server as an ASGI app; its lifespan runs the engine and agents."""
    config.state.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca = ensure_ca(config.state / "ca")
    if config.tls_auto:
        cert, key = issue_cert(config.state, config.host, config.public_url, ca)
        config = replace(config, tls_cert=cert, tls_key=key)
    if config.tls_cert is not None and not config.public_url:
        check_trusted(config.tls_cert, ca, config.state / "ca")
    server_id = config.server_id or f"{socket.gethostname()}:{config.port}"
    leadership = Leadership(
        PostgresLease(config.store_url) if config.store_url else None,
        server_id,
        config.public_url or webhook_url(config).removesuffix(PATH),
    )
    store: RunStore = (
        PostgresStore(config.store_url, fence=leadership.fence)
        if config.store_url
        else SqliteStore(config.state / "apsis.db")
    )
    registry = Registry(
        config.state,
        ca,
        lambda: webhook_url(config),
        settings=config.agents,
        epoch=leadership.agent_epoch,
        # With servers sharing a database, each one's local agent has its own id.
        local_name=server_id if config.store_url else "",
    )
    # The installed plugins, loaded once: a reload reads job files, not packages.
    extensions = load_extensions().extensions
    internal: asyncio.Queue[Run] = asyncio.Queue()
    engine = Engine(
        store,
        registry,
        Templates(),
        EngineSettings(
            horizon=Horizon(config.horizon, config.max_scheduled_per_schedule),
            waiting_max_time=config.waiting_max_time,
            output_max=config.output_max,
            smtp=config.smtp,
            public_url=config.public_url,
            server=server_id if config.store_url else None,
        ),
        internal=internal.put_nowait,
    )
    facts = Facts(engine, registry.agent_started)
    checker = Checker(engine, registry, config.checks, config.horizon, lambda: leadership.leading)
    metrics = Metrics(
        engine,
        registry,
        None if config.store_url else config.state / "apsis.db",
        leadership,
        checker,
    )
    housekeeping = Housekeeping(
        engine,
        store,
        internal,
        config.archive or config.state / "archive.db",
        config.retention,
        config.retention_period,
        state_dir=config.state,
    )
    verifier = Verifier(registry.keys)
    feeds = Feeds(engine, registry, gather=SUMMARY_GATHER)

    def reload() -> dict[str, Any]:
        templates, loaded = load_jobs(config, extensions)
        app.state.job_errors = loaded.errors
        # A job whose file no longer loads keeps its last good definition (and its
        # scheduled runs) until the file is mended: a typo stops nothing.
        kept = sorted(
            {e.job_id for e in loaded.errors if e.job_id in engine.jobs} - set(loaded.jobs)
        )
        jobs = {**{job_id: engine.jobs[job_id] for job_id in kept}, **loaded.jobs}
        answer: dict[str, Any] = engine.replace_jobs(jobs, templates)
        answer["kept"] = kept
        answer["errors"] = [e.__dict__ for e in loaded.errors]
        return answer

    def take_over() -> None:
        """Start leading from what the store holds: unfinished runs, their agents."""
        engine.reset()
        registry.reset()
        facts.reset()
        restore(engine, config.catch_up)
        registry.adopt({r.agent_id for r in engine.runs.values() if r.agent_id})
        log.info("%d unfinished runs restored", len(engine.runs))
        # What startup built (modules, jobs, restored runs) lives as long as the server:
        # out of the cycle collector's way, a full collection in a burst of starts
        # scans only what came later (~100k objects fewer with 2,000 jobs).
        gc.collect()
        gc.freeze()
        leadership.ready = True

    async def lead(epoch: int) -> None:
        if not leadership.ready:
            take_over()
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(engine.run())
                tasks.create_task(registry.run(facts))
                tasks.create_task(housekeeping.run())
        finally:  # stepping down: nothing of this leadership is acted on any more
            engine.reset()
            registry.reset()
            facts.reset()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        templates, loaded = load_jobs(config, extensions)
        app.state.job_errors = loaded.errors
        engine.set_jobs(loaded.jobs, templates)
        log.info("loaded %d jobs", len(loaded.jobs))
        if not config.store_url:
            take_over()  # the only server: it leads before it answers
        following = [_follow(feeds, leadership, config.store_url)] if config.store_url else []
        task = asyncio.create_task(
            _background(
                leadership.run(lead),
                metrics.run(),
                checker.run(config.check_interval),
                *following,
            )
        )
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            store.close()

    app = Starlette(
        routes=[
            *rest.routes(),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
            webhook_route(registry, facts, verifier),
            *feed_routes(),
            *web_routes(),
        ],
        lifespan=lifespan,
        exception_handlers=dict(error_handlers()),
        middleware=[
            Middleware(SecurityHeaders),
            Middleware(
                Gate,
                hosts=allowed_hosts(config.host, config.public_url, config.api.hosts),
                origins=allowed_origins(config.public_url, config.api.origins),
                max_body=config.api.max_body,
            ),
            *_cors(config),
            Middleware(TokenGuard, tokens=config.api.tokens),
            Middleware(LeaderGate, leadership=leadership),
            Middleware(WebhookTiming, metrics=metrics, path=PATH),
        ],
    )
    app.state.feeds = feeds
    app.state.engine = engine
    app.state.operations = Operations(engine)
    app.state.reload = reload
    app.state.registry = registry
    app.state.leadership = leadership
    app.state.config = config
    app.state.extensions = extensions
    app.state.metrics = metrics
    app.state.checker = checker
    app.state.job_errors = []
    return app


def _cors(config: Config) -> list[Middleware]:
    """CORS answers for the origins the config lists, and none otherwise."""
    if not config.api.origins:
        return []
    return [
        Middleware(
            CORSMiddleware,
            allow_origins=list(config.api.origins),
            allow_methods=["GET", "POST"],
            allow_headers=["authorization", "content-type"],
        )
    ]


async def _background(*work: Coroutine[None, None, None]) -> None:
    async with asyncio.TaskGroup() as tasks:
        for coroutine in work:
            tasks.create_task(coroutine)


class _Server(uvicorn.Server):
    """uvicorn without its 0.1 s tick: it wakes ten times a second to see whether it
    should exit and to date its answers. Here a signal wakes it, and answers carry
    no Date header: an idle server does not wake for nothing."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._exit = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if self._loop is not None:  # a signal handler: wake the loop through its pipe
            self._loop.call_soon_threadsafe(self._exit.set)

    async def main_loop(self) -> None:
        self._loop = asyncio.get_running_loop()
        if not await self.on_tick(0):  # the default headers, once; or exit already
            await self._exit.wait()


async def _follow(feeds: Feeds, leadership: Leadership, url: str) -> None:
    """While standing by, follow the leader's writes for the feeds' subscribers."""
    while True:
        if leadership.leading:  # the engine publishes its own commits
            await asyncio.sleep(1.0)
            continue
        try:
            async with RunChanges(url) as changes:
                async for run_ids in changes:
                    if leadership.leading:
                        break
                    feeds.followed(run_ids)
        except Unavailable as exc:
            log.warning("cannot follow the leader's writes: %s", exc)
            await asyncio.sleep(1.0)


# What a log line must never show: a token in a URL (an old client's websocket
# query), a bearer header, or a websocket's token subprotocol.
_SECRETS = re.compile(r"(access_token=|[Bb]earer\s+|apsis\.token\.)[^\s&\"',]+")


class _Redact(logging.Filter):
    """Blanks secrets out of every record before any handler writes it."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if _SECRETS.search(text):
            record.msg, record.args = _SECRETS.sub(r"\1[redacted]", text), None
        return True


def _setup_logging(config: Config) -> None:
    # One line per agent request would drown the log.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if config.log_file is not None:
        # Made private before the first line: run messages and job ids are no one
        # else's business on a shared host.
        os.close(os.open(config.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
        handlers.append(logging.FileHandler(config.log_file))
    for handler in handlers:
        handler.addFilter(_Redact())
    logging.basicConfig(
        level=config.log_level,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="apsis-server", description="Run the Apsis server.")
    parser.add_argument("--config", type=Path, help="config.yaml")
    parser.add_argument("--jobs", type=Path, help="jobs directory")
    parser.add_argument("--state", type=Path, help="state directory")
    parser.add_argument("--bind", help="HOST:PORT (port 0: any free port)")
    parser.add_argument("--log-file", type=Path)
    parser.add_argument("--port-file", type=Path, help="write the bound port here once listening")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
        if args.bind:
            config = config.with_bind(args.bind)
    except (OSError, ValueError) as exc:
        print(f"apsis-server: bad configuration: {exc}", file=sys.stderr)
        return 2
    config = replace(
        config,
        jobs=args.jobs or config.jobs,
        state=args.state or config.state,
        log_file=args.log_file or config.log_file,
    )
    refusal, warning = exposure(
        config.host, config.port, bool(config.api.tokens), config.api.allow_unauthenticated
    )
    if refusal is not None:
        print(f"apsis-server: {refusal}", file=sys.stderr)
        return 2
    _setup_logging(config)
    if warning is not None:
        for _ in range(3):  # hard to miss in a log
            log.warning(warning)
    # IPPROTO_TCP explicitly: asyncio turns Nagle off only for sockets that say TCP,
    # and with Nagle on every two-part answer waits ~40 ms for a delayed ACK.
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((config.host, config.port))
    except OSError as exc:
        print(
            f"apsis-server: cannot bind {config.host}:{config.port}: {exc.strerror}",
            file=sys.stderr,
        )
        return 1
    sock.listen(1024)
    config = replace(config, port=sock.getsockname()[1])
    log.info(
        "apsis-server %s on %s:%d, jobs %s, state %s",
        __version__,
        config.host,
        config.port,
        config.jobs,
        config.state,
    )
    app = build_app(config)
    config = app.state.config  # with the API certificate, if tls.auto issued one
    certfile = keyfile = None
    if config.tls_cert and config.tls_key:
        server_context(config.tls_cert, config.tls_key)  # fail early on a bad pair
        certfile, keyfile = str(config.tls_cert), str(config.tls_key)
    server = _Server(
        uvicorn.Config(
            app,
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=5,
            date_header=False,  # no tick to keep it current (see _Server)
            timeout_keep_alive=KEEP_ALIVE,
            # Feed messages are sent to many clients: compressing each per client
            # costs more CPU than the bytes it saves on a LAN.
            ws_per_message_deflate=False,
            http=H11,  # each answer in one write (apsis_common/serving.py)
            ssl_certfile=certfile,
            ssl_keyfile=keyfile,
        )
    )
    if args.port_file:
        args.port_file.write_text(str(config.port))
    server.run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
