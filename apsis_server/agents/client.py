"""The signed HTTPS client of one agent: msgpack requests, errors by status."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlencode

from apsis_common import codec
from apsis_common import protocol as p
from apsis_common.auth import Key, sign
from apsis_common.errors import AuthError, BadInput, Conflict, NotFound, Unavailable
from apsis_common.http11 import Answer, Http11Client
from apsis_common.tls import client_context

T = TypeVar("T")

_STATUS_ERRORS: dict[int, type[Exception]] = {
    400: BadInput,
    401: AuthError,
    404: NotFound,
    409: Conflict,
    413: BadInput,
    503: Unavailable,
}


class AgentClient:
    """Signed msgpack requests to one agent over verified HTTPS.

    With servers sharing a database, every request that changes something carries
    the leadership epoch of the server that sends it (`?leader_epoch=N`, covered by
    the signature; -1 standing by; none for the only server): an agent refuses one
    older than the newest it has seen (apsis_agent/fence.py, spec 06), so a deposed
    leader can never start or stop anything."""

    def __init__(
        self,
        base_url: str,
        key: Key,
        ca_pem: str,
        timeout: float = 30.0,
        *,
        epoch: Callable[[], int | None],
    ) -> None:
        self.base_url = base_url
        self._key = key
        self._epoch = epoch
        # The agent's event sequence, as it said when reconciled ("": not known).
        self.instance = ""
        # The agent's event sequence, as it said when reconciled ("": not known).
        self.instance = ""
        self._http = Http11Client(base_url, client_context(ca_pem), timeout)

    async def close(self) -> None:
        await self._http.close()

    async def request(self, method: str, target: str, message: Any = None) -> bytes:
        try:
            body = b"" if message is None else codec.encode(message)
        except (ValueError, TypeError, OverflowError) as exc:  # UnicodeEncodeError too
            raise BadInput(f"cannot be sent: {exc}") from None
        if len(body) > p.MAX_REQUEST_BYTES:
            raise BadInput(
                f"cannot be sent: {len(body)} bytes, over the agent's limit of "
                f"{p.MAX_REQUEST_BYTES}"
            )
        epoch = self._epoch()
        if method != "GET" and epoch is not None:
            target += f"{'&' if '?' in target else '?'}leader_epoch={epoch}"
        headers = sign(self._key, method, target, body)
        headers["content-type"] = p.MSGPACK
        try:
            answer = await self._http.request(method, target, headers, body)
        except (OSError, EOFError, ValueError, asyncio.LimitOverrunError) as exc:
            raise Unavailable(f"agent at {self.base_url} unreachable: {exc!r}") from exc
        except RuntimeError as exc:  # this client was closed: the agent was reconnected
            raise Unavailable(f"agent at {self.base_url}: {exc}") from exc
        if answer.status >= 400:
            error = _STATUS_ERRORS.get(answer.status, Unavailable)
            raise error(f"agent answered {answer.status}: {reason(answer)}")
        return answer.body

    async def call(self, cls: type[T], method: str, target: str, message: Any = None) -> T:
        return codec.decode(cls, await self.request(method, target, message))

    async def info(self) -> p.AgentInfo:
        return await self.call(p.AgentInfo, "GET", "/agent")

    async def start(self, procs: list[p.StartProc]) -> tuple[p.StartResult, ...]:
        answer = await self.call(p.StartResults, "POST", "/procs", p.StartBatch(tuple(procs)))
        return answer.results

    async def procs(self) -> tuple[p.ProcSummary, ...]:
        return (await self.call(p.ProcList, "GET", "/procs")).procs

    async def output(self, proc_id: str, start: int, stop: int, fd: int = 1) -> bytes:
        """Bytes of a process's stdout (fd 1) or separate stderr (fd 2)."""
        query = urlencode({"start": start, "stop": stop, **({"fd": fd} if fd != 1 else {})})
        return await self.request("GET", f"/procs/{proc_id}/output?{query}")

    async def stop(self, proc_id: str, request: p.StopRequest) -> None:
        await self.request("POST", f"/procs/{proc_id}/stop", request)

    async def signal(self, proc_id: str, signal: int) -> None:
        await self.request("POST", f"/procs/{proc_id}/signal", p.SignalRequest(signal))

    async def delete(self, proc_id: str) -> None:
        await self.request("DELETE", f"/procs/{proc_id}")

    async def follow_me(self, webhook_url: str) -> p.AgentInfo:
        """Tell the agent this server leads (its epoch goes with the request): it
        refuses older leaders from now on and sends its events to `webhook_url`."""
        return await self.call(p.AgentInfo, "PUT", "/leader", p.LeaderNotice(webhook_url))


def reason(answer: Answer) -> str:
    """What an agent's error answer says: its `{"error": ...}` (msgpack or JSON), or
    the start of its text, never raw bytes."""
    try:
        plain = codec.decode_plain(answer.body) if answer.body else None
    except ValueError:
        plain = None
    if isinstance(plain, dict) and isinstance(plain.get("error"), str):
        return str(plain["error"])[:500]
    return answer.text[:200]
