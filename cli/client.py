"""A small typed client for the server's REST API: one method per endpoint.

Answers are the server's JSON, as dicts. Error answers become exceptions of the
shared tree (`apsis_common.errors`) carrying the server's message; a server that
cannot be reached becomes `Unavailable` naming the URL.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

from apsis_common.errors import (
    ApsisError,
    AuthError,
    BadInput,
    Conflict,
    Forbidden,
    NotFound,
    Unavailable,
)
from apsis_common.tls import client_context

Json = dict[str, Any]

API = "/api/v1"

# Status codes → the error the server meant (docs/api.md).
ERRORS: Mapping[int, type[ApsisError]] = {
    400: BadInput,
    401: AuthError,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    422: BadInput,
    503: Unavailable,
}


@dataclass(frozen=True)
class Output:
    """A slice of a run's output and the output's full length."""

    data: bytes
    length: int


def _job_errors(body: Json) -> list[str]:
    errors = body.get("errors")
    if not isinstance(errors, list):
        return []
    lines = []
    for err in errors:
        if isinstance(err, dict):
            where = ": ".join(str(err[k]) for k in ("path", "key_path") if err.get(k))
            lines.append(f"  {where}: {err.get('message', '')}" if where else f"  {err}")
    return lines


def error_for(response: httpx.Response) -> ApsisError:
    """The exception for an error answer, with the server's message."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and body.get("error"):
        message = "\n".join([str(body["error"]), *_job_errors(body)])
    else:
        message = response.text.strip() or response.reason_phrase
        message = f"{response.status_code} {message}"
    return ERRORS.get(response.status_code, ApsisError)(message)


def ssl_context(base_url: str, ca: str | None) -> ssl.SSLContext | None:
    """A context trusting `ca` for an https server; None means the system's CAs."""
    if ca is None or not base_url.startswith("https:"):
        return None
    try:
        with open(ca) as file:
            return client_context(file.read())
    except OSError as exc:
        raise BadInput(f"cannot read CA certificate {ca}: {exc.strerror}") from None


def auth_headers(token: str | None) -> dict[str, str]:
    """`Authorization: Bearer TOKEN`, for requests and websocket handshakes alike."""
    return {"Authorization": f"Bearer {token}"} if token else {}


def job_path(job_id: str) -> str:
    """The URL path of a job; ids contain slashes and maybe spaces."""
    return f"{API}/jobs/{quote(job_id, safe='/')}"


def run_path(run_id: str) -> str:
    return f"{API}/runs/{quote(run_id, safe='')}"


class ApsisClient:
    """Synchronous client for one Apsis server."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        ca: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        context = ssl_context(self.base_url, ca)
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=auth_headers(token),
            timeout=timeout,
            verify=True if context is None else context,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ApsisClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- plumbing ---------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int | float] | None = None,
        body: Json | None = None,
        timeout: float | None = None,
    ) -> httpx.Response:
        """One request; error answers and transport failures raise."""
        extra: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
        try:
            response = self._http.request(method, path, params=params, json=body, **extra)
        except httpx.TransportError as exc:
            reason = str(exc) or type(exc).__name__
            raise Unavailable(
                f"cannot reach the Apsis server at {self.base_url}: {reason}"
            ) from exc
        if response.is_error:
            raise error_for(response)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Json:
        response = self.request(method, path, **kwargs)
        try:
            body = response.json()
        except ValueError:
            raise ApsisError(
                f"the server answered {path} with something that is not JSON"
            ) from None
        if not isinstance(body, dict):
            raise ApsisError(f"the server answered {path} with unexpected JSON")
        return body

    # -- endpoints --------------------------------------------------------------

    def alive(self) -> Json:
        return self._json("GET", f"{API}/alive")

    def version(self) -> Json:
        return self._json("GET", f"{API}/version")

    def jobs(self, label: str | None = None, q: str | None = None) -> Json:
        """`{"jobs": [Job], "errors": [JobError]}`."""
        params = {k: v for k, v in (("label", label), ("q", q)) if v}
        return self._json("GET", f"{API}/jobs", params=params)

    def job(self, job_id: str) -> Json:
        """`{"job": Job}`."""
        return self._json("GET", job_path(job_id))

    def job_runs(self, job_id: str, limit: int | None = None, before: str | None = None) -> Json:
        params: dict[str, str | int] = {}
        if limit is not None:
            params["limit"] = limit
        if before is not None:
            params["before"] = before
        return self._json("GET", f"{job_path(job_id)}/runs", params=params)

    def reload(self) -> Json:
        return self._json("POST", f"{API}/jobs/reload")

    def runs(self, **filters: str | int | None) -> Json:
        """`{"runs": [Run], "next": cursor}`; filters as in docs/api.md, None left out."""
        params = {k: v for k, v in filters.items() if v is not None}
        return self._json("GET", f"{API}/runs", params=params)

    def create_run(self, body: Json, wait: float | None = None) -> Json:
        """Schedule a run (job or ad hoc); `{"run": Run}`."""
        params = {} if wait is None else {"wait": wait}
        timeout = None if wait is None else wait + 30.0
        return self._json("POST", f"{API}/runs", params=params, body=body, timeout=timeout)

    def run(self, run_id: str) -> Json:
        return self._json("GET", run_path(run_id))

    def run_log(self, run_id: str) -> Json:
        return self._json("GET", f"{run_path(run_id)}/log")

    def run_meta(self, run_id: str) -> Json:
        return self._json("GET", f"{run_path(run_id)}/meta")

    def run_dependencies(self, run_id: str) -> Json:
        return self._json("GET", f"{run_path(run_id)}/dependencies")

    def output(
        self, run_id: str, start: int = 0, stop: int | None = None, name: str = "merged"
    ) -> Output:
        """Raw bytes of output `name` (merged, stdout, stderr) from `start` to
        `stop`, and its full length."""
        params: dict[str, str | int] = {"start": start, "format": "raw"}
        if name != "merged":
            params["name"] = name
        if stop is not None:
            params["stop"] = stop
        response = self.request("GET", f"{run_path(run_id)}/output", params=params)
        header = response.headers.get("x-apsis-output-length")
        length = int(header) if header and header.isdigit() else start + len(response.content)
        return Output(response.content, length)

    def operate(self, run_id: str, operation: str) -> Json:
        """start, skip, stop, kill or rerun; `{"run": Run}`."""
        return self._json("POST", f"{run_path(run_id)}/{operation}")

    def signal(self, run_id: str, signal: str) -> Json:
        return self._json("POST", f"{run_path(run_id)}/signal/{quote(signal, safe='')}")

    def mark(self, run_id: str, state: str, message: str | None = None) -> Json:
        body = {"message": message} if message else {}
        path = f"{run_path(run_id)}/mark/{quote(state, safe='')}"
        return self._json("POST", path, body=body)

    def force_error(self, run_id: str, message: str | None = None) -> Json:
        """Any unfinished run to `error` (its process, if any, is killed)."""
        body = {"message": message} if message else {}
        return self._json("POST", f"{run_path(run_id)}/error", body=body)

    def agents(self) -> Json:
        return self._json("GET", f"{API}/agents")

    def checks(self) -> Json:
        """The sanity checker's findings, checked now."""
        return self._json("GET", f"{API}/checks")

    def servers(self) -> Json:
        """This server's role, who leads, and every server sharing the store."""
        return self._json("GET", f"{API}/servers")
