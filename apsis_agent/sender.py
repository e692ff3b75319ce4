"""Webhook delivery: one signed batch in flight, resent with jittered backoff until acked.

Each POST carries the oldest unacknowledged events (up to a count and a byte
budget, output bytes read from the files now); the server answers the highest
contiguous sequence number it applied, and everything up to it leaves the
outbox. With nothing to send, an empty batch every `heartbeat` seconds tells the
server the agent is alive; once a heartbeat period a batch also carries what
`GET /agent` would answer (`info`), so the server need not poll. There is no
give-up: an unreachable server only means the events wait on disk. Batches go
no more often than every `pace` seconds: in a burst of runs, each batch carries
more events (the server commits once a batch), at the cost of up to `pace` of
delay for an event that comes right after a batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from apsis_agent.outbox import Outbox
from apsis_agent.state import Keys, Settings
from apsis_common import auth, codec, protocol, tls
from apsis_common.errors import ProtocolError
from apsis_common.http11 import Http11Client
from apsis_common.protocol import Ack, AgentInfo

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Delivery:
    """Tunables of webhook delivery."""

    heartbeat: float = 5.0
    max_events: int = 5000
    max_bytes: int = 2 * 1024 * 1024
    backoff_min: float = 0.05
    backoff_max: float = 10.0
    timeout: float = 30.0
    # Batches go at most this often: a burst's events go in fewer, larger batches
    # (each one a commit on the server). An event after a quiet spell goes at once.
    pace: float = 0.01


class Sender:
    """Posts the outbox to the server's webhook."""

    def __init__(
        self,
        outbox: Outbox,
        config: Callable[[], tuple[Settings, Keys]],
        epoch: int,
        delivery: Delivery,
        on_ack: Callable[[], None],
        info: Callable[[], AgentInfo],
    ) -> None:
        self._outbox = outbox
        self._config = config
        self._epoch = epoch
        self._delivery = delivery
        self._on_ack = on_ack
        self._info = info
        self._info_sent = -float("inf")  # monotonic time of the last accepted info
        self._wake = asyncio.Event()
        self._posted = -float("inf")  # monotonic time of the latest post
        self._retry = asyncio.Event()
        self._client: Http11Client | None = None
        self._client_for_key: tuple[str, str] | None = None  # (webhook URL, CA)
        self.connected = False
        self._last_problem: str | None = None

    def wake(self) -> None:
        """New events are stored: send them."""
        self._wake.set()

    def retry_now(self) -> None:
        """The webhook moved (a new leader): end any backoff and send at once."""
        self._retry.set()
        self._wake.set()

    async def run(self) -> None:
        """Deliver forever (until cancelled)."""
        failures = 0
        try:
            while True:
                outbox = self._outbox
                if outbox.stored_seq <= outbox.acked_seq:
                    # asyncio.timeout, not wait_for: in 3.11 wait_for can swallow a cancel.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self._delivery.heartbeat):
                            await self._wake.wait()
                self._wake.clear()
                pause = self._posted + self._delivery.pace - time.monotonic()
                if pause > 0:
                    await asyncio.sleep(pause)
                self._posted = time.monotonic()
                progressed = await self._send_one()
                if progressed:
                    failures = 0
                    continue
                failures += 1
                self._retry.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._backoff(failures)):
                        await self._retry.wait()
        finally:
            if self._client is not None:
                await self._client.close()

    def _backoff(self, failures: int) -> float:
        d = self._delivery
        delay: float = min(d.backoff_max, d.backoff_min * 2.0 ** min(failures, 20))
        return delay * random.uniform(0.5, 1.5)

    async def _send_one(self) -> bool:
        """Post one batch; True if it was accepted (and acked something, if not empty)."""
        settings, keys = self._config()
        envelopes, last = self._outbox.batch(self._delivery.max_events, self._delivery.max_bytes)
        outbox = self._outbox
        now = time.monotonic()
        batch = {
            "agent_id": settings.agent_id,
            "epoch": self._epoch,
            "events": envelopes,
            "instance": outbox.instance,
            "acked": outbox.acked_seq,
        }
        with_info = now - self._info_sent >= self._delivery.heartbeat
        if with_info:
            batch["info"] = self._info()
        body = codec.encode(batch)
        del batch
        del envelopes  # the bytes live on in `body` only
        try:
            ack = await self._post(settings, keys, body)
        except (OSError, EOFError, asyncio.LimitOverrunError, ProtocolError, ValueError) as exc:
            problem = str(exc) or type(exc).__name__
            # Log the first failure of a series and each new kind, not every retry.
            if self.connected or problem != self._last_problem:
                log.warning("webhook %s failed (retrying): %s", settings.webhook_url, problem)
            self._last_problem = problem
            self.connected = False
            return False
        if not self.connected and self._last_problem is not None:
            log.info("webhook %s reachable again", settings.webhook_url)
            self._last_problem = None
        self.connected = True
        if with_info:
            self._info_sent = now
        if last <= self._outbox.acked_seq:
            return True  # a heartbeat
        try:
            acked = self._outbox.ack(ack.acked_seq)
        except sqlite3.Error as exc:
            # A full disk: the events stay (and are sent again; the server knows them
            # for duplicates and acknowledges them again) until the ack can be stored.
            problem = f"cannot store the ack of seq {ack.acked_seq} (retrying): {exc}"
            if problem != self._last_problem:
                log.error("%s", problem)
            self._last_problem = problem
            return False
        if acked:
            if self._last_problem is not None:
                log.info("the ack is stored again")
                self._last_problem = None
            self._on_ack()
            return True
        log.warning("webhook acknowledged %d, below the batch sent", ack.acked_seq)
        return False

    async def _post(self, settings: Settings, keys: Keys, body: bytes) -> Ack:
        client = await self._client_for(settings)
        url = urlsplit(settings.webhook_url)
        target = (url.path or "/") + (f"?{url.query}" if url.query else "")
        headers = auth.sign(keys.current, "POST", target, body)
        headers["content-type"] = protocol.MSGPACK
        answer = await client.request("POST", target, headers, body)
        if answer.status != 200:
            raise ValueError(f"status {answer.status}: {answer.text[:200]}")
        content_type = answer.headers.get("content-type", protocol.MSGPACK)
        return codec.decode(Ack, answer.body, content_type)

    async def _client_for(self, settings: Settings) -> Http11Client:
        # A new webhook (a new leader) or a new CA (after a bootstrap): a new client.
        key = (settings.webhook_url, settings.ca_pem)
        if self._client is None or self._client_for_key != key:
            if self._client is not None:
                await self._client.close()
            # One connection, kept between heartbeats (the server keeps an idle one
            # 60 s, KEEP_ALIVE in apsis_common/serving.py; one it closed is replaced).
            self._client = Http11Client(
                settings.webhook_url,
                tls.client_context(settings.ca_pem),
                timeout=self._delivery.timeout,
                max_connections=1,
            )
            self._client_for_key = key
        return self._client
