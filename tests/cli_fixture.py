"""A stand-in Apsis API for CLI tests: a small Starlette app that answers docs/api.md.

It keeps jobs, runs, logs and output in memory, served by uvicorn on 127.0.0.1
(port 0) in a background thread. Runs created or started here finish after a
few polls of `GET /runs/{id}`, so `wait` and `--follow` have something to wait for.
It serves no websockets (uvicorn `ws="none"`): the live commands cannot open a
feed here and fall back to polling, which is what these tests exercise; the feeds
themselves are tested against the real server (tests/integration/test_cli_live.py).

Every answer it gives is checked against the OpenAPI document the real server
serves (`apsis_server.api.openapi.document()`): its status, content type and
JSON schema for that operation. An answer the real API could not give is
recorded, and `serving` fails when its block ends, so a CLI test cannot pass on
a shape the server does not have.
"""

from __future__ import annotations

import copy
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from apsis_server.api.openapi import document
from apsis_server.core.jobs import ADHOC_JOB
from tests.openapi_schema import answer_problems, operation_for

Json = dict[str, Any]

T0 = "2026-11-26T21:00:00.000000Z"
FINISHED = {"success", "failure", "error", "skipped"}


def make_job(job_id: str, labels: tuple[str, ...] = (), command: str = "echo hello") -> Json:
    return {
        "job_id": job_id,
        "params": [],
        "program": {"type": "shell", "command": command},
        "schedules": [
            {"type": "interval", "enabled": True, "text": "every 10s", "zone": None, "stop": None}
        ],
        "conditions": [],
        "actions": [],
        "metadata": {"description": f"The {job_id} job.", "labels": list(labels)},
        "description_html": f"<p>The {job_id} job.</p>\n",
        "labels": list(labels),
        "next_times": ["2026-11-26T21:00:10.000000Z"],
    }


def make_run(run_id: str, job_id: str | None, state: str, args: Json | None = None) -> Json:
    """A run; `job_id` None for an ad-hoc run (the server files those under `adhoc`)."""
    return {
        "run_id": run_id,
        "job_id": ADHOC_JOB if job_id is None else job_id,
        "args": args or {},
        "state": state,
        "schedule_time": T0,
        "stop_time": None,
        "times": {"scheduled": T0, state: T0},
        "message": f"now {state}",
        "ad_hoc": job_id is None,
        "origin": "adhoc" if job_id is None else "hand",
        "rerun_of": None,
        "labels": [],
        "elapsed": 0.012 if state in FINISHED else None,
    }


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


@dataclass
class FakeApi:
    """The in-memory state behind the stand-in API, and what requests it saw."""

    jobs: list[Json] = field(default_factory=list)
    job_errors: list[Json] = field(default_factory=list)
    runs: dict[str, Json] = field(default_factory=dict)
    logs: dict[str, list[Json]] = field(default_factory=dict)
    outputs: dict[str, bytes] = field(default_factory=dict)
    # run id → (polls left, final state): the run finishes after that many reads.
    pending: dict[str, tuple[int, str]] = field(default_factory=dict)
    agents: list[Json] = field(default_factory=list)
    token: str | None = None
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)
    created: list[Json] = field(default_factory=list)
    url: str = ""
    # Answers the real API could not give (see the module's docstring).
    wrong: list[str] = field(default_factory=list)
    openapi: Json = field(default_factory=document)

    def add_run(
        self, run: Json, output: bytes = b"", finish: tuple[int, str] | None = None
    ) -> Json:
        self.runs[run["run_id"]] = run
        self.logs[run["run_id"]] = [{"time": T0, "state": run["state"], "message": "created"}]
        self.outputs[run["run_id"]] = output
        if finish is not None:
            self.pending[run["run_id"]] = finish
        return run

    def _next_id(self) -> str:
        return f"r{max((int(r[1:]) for r in self.runs), default=0) + 1}"

    def _transition(self, run: Json, state: str, message: str) -> None:
        run["state"] = state
        run["times"][state] = T0
        run["message"] = message
        if state in FINISHED:
            run["elapsed"] = 0.5
        self.logs[run["run_id"]].append({"time": T0, "state": state, "message": message})

    def _poll(self, run: Json) -> None:
        left, final = self.pending.get(run["run_id"], (0, ""))
        if not final:
            return
        if left <= 1:
            del self.pending[run["run_id"]]
            self.outputs[run["run_id"]] += b"[end]\n"
            self._transition(run, final, f"finished {final}")
        else:
            self.pending[run["run_id"]] = (left - 1, final)

    # -- handlers ---------------------------------------------------------------

    async def alive(self, request: Request) -> Response:
        return JSONResponse({"alive": True})

    async def list_jobs(self, request: Request) -> Response:
        label = request.query_params.get("label")
        jobs = [j for j in self.jobs if not label or label in j["labels"]]
        return JSONResponse({"jobs": jobs, "errors": self.job_errors})

    async def get_job(self, request: Request) -> Response:
        job_id = request.path_params["job_id"]
        errors = [e for e in self.job_errors if e["job_id"] == job_id]
        for job in self.jobs:
            if job["job_id"] == job_id:  # with errors: a reload kept this definition
                return JSONResponse({"job": job, "errors": errors} if errors else {"job": job})
        if errors:
            return JSONResponse(
                {"error": f"job {job_id} failed to load", "errors": errors}, status_code=422
            )
        return error(404, f"unknown job: {job_id}")

    async def job_runs(self, request: Request) -> Response:
        job_id = request.path_params["job_id"]
        runs = [r for r in self.runs.values() if r["job_id"] == job_id]
        return JSONResponse({"runs": runs[::-1], "next": None})

    async def reload(self, request: Request) -> Response:
        return JSONResponse(
            {
                "added": ["demo/new"],
                "changed": [],
                "removed": [],
                "kept": [],
                "errors": self.job_errors,
            }
        )

    async def list_runs(self, request: Request) -> Response:
        query = request.query_params
        runs = list(self.runs.values())[::-1]
        if query.get("job_id"):
            runs = [r for r in runs if r["job_id"] == query["job_id"]]
        if query.get("state"):
            runs = [r for r in runs if r["state"] in query["state"].split(",")]
        limit = int(query.get("limit", "1000"))
        return JSONResponse({"runs": runs[:limit], "next": None})

    async def create_run(self, request: Request) -> Response:
        body = await request.json()
        self.created.append(body)
        job_id = body.get("job_id")
        if job_id is not None and job_id not in {j["job_id"] for j in self.jobs}:
            return error(404, f"unknown job: {job_id}")
        run = make_run(self._next_id(), job_id, "running", body.get("args"))
        output = f"output of {job_id or body['program']['command']}\n".encode()
        self.add_run(run, output, finish=(2, "success"))
        return JSONResponse({"run": run}, status_code=201)

    def _run(self, request: Request) -> Json | None:
        return self.runs.get(request.path_params["run_id"])

    async def get_run(self, request: Request) -> Response:
        run = self._run(request)
        if run is None:
            return error(404, f"unknown run: {request.path_params['run_id']}")
        self._poll(run)
        return JSONResponse({"run": run})

    async def run_log(self, request: Request) -> Response:
        run = self._run(request)
        if run is None:
            return error(404, "unknown run")
        return JSONResponse({"log": self.logs[run["run_id"]]})

    async def run_meta(self, request: Request) -> Response:
        run = self._run(request)
        if run is None:
            return error(404, "unknown run")
        meta = {"host": "localhost", "pid": 4242, "exit_code": 0}
        return JSONResponse({"meta": meta | {"output_length": len(self.outputs[run["run_id"]])}})

    async def output(self, request: Request) -> Response:
        run = self._run(request)
        if run is None:
            return error(404, "unknown run")
        data = self.outputs[run["run_id"]]
        start = int(request.query_params.get("start", "0"))
        stop = int(request.query_params.get("stop", str(len(data))))
        # A small page size, so that clients must loop.
        chunk = data[start : min(stop, start + 64)]
        headers = {"X-Apsis-Output-Length": str(len(data))}
        return Response(chunk, media_type="application/octet-stream", headers=headers)

    async def operate(self, request: Request) -> Response:
        run = self._run(request)
        if run is None:
            return error(404, "unknown run")
        operation = request.path_params["operation"]
        allowed = {
            "start": ({"scheduled", "waiting"}, "running"),
            "skip": ({"scheduled", "waiting"}, "skipped"),
            "stop": ({"running"}, "failure"),
            "kill": ({"running"}, "failure"),
            "rerun": (FINISHED, ""),
        }
        states, target = allowed[operation]
        if run["state"] not in states:
            return error(409, f"cannot {operation} run {run['run_id']}: it is {run['state']}")
        if operation == "rerun":
            new = make_run(self._next_id(), run["job_id"], "scheduled", run["args"])
            new["rerun_of"] = run["run_id"]
            return JSONResponse({"run": self.add_run(new)})
        self._transition(run, target, f"{operation} by request")
        return JSONResponse({"run": run})

    async def signal(self, request: Request) -> Response:
        run = self._run(request)
        if run is None:
            return error(404, "unknown run")
        if run["state"] != "running":
            return error(409, f"run {run['run_id']} is not running")
        run["message"] = f"sent {request.path_params['signal']}"
        return JSONResponse({"run": run})

    async def mark(self, request: Request) -> Response:
        run = self._run(request)
        if run is None:
            return error(404, "unknown run")
        self._transition(run, request.path_params["state"], "marked")
        return JSONResponse({"run": run})

    async def list_agents(self, request: Request) -> Response:
        return JSONResponse({"agents": self.agents})

    # -- app --------------------------------------------------------------------

    def app(self) -> Starlette:
        def route(path: str, endpoint: Any, method: str = "GET") -> Route:
            return Route(f"/api/v1{path}", self._guard(endpoint), methods=[method])

        return Starlette(
            routes=[
                route("/alive", self.alive),
                route("/jobs", self.list_jobs),
                route("/jobs/reload", self.reload, "POST"),
                route("/jobs/{job_id:path}/runs", self.job_runs),
                route("/jobs/{job_id:path}", self.get_job),
                route("/runs", self.list_runs),
                route("/runs", self.create_run, "POST"),
                route("/runs/{run_id}", self.get_run),
                route("/runs/{run_id}/log", self.run_log),
                route("/runs/{run_id}/meta", self.run_meta),
                route("/runs/{run_id}/output", self.output),
                route("/runs/{run_id}/signal/{signal}", self.signal, "POST"),
                route("/runs/{run_id}/mark/{state}", self.mark, "POST"),
                route("/runs/{run_id}/{operation}", self.operate, "POST"),
                route("/agents", self.list_agents),
            ]
        )

    def _guard(self, endpoint: Any) -> Any:
        async def guarded(request: Request) -> Response:
            auth = request.headers.get("authorization")
            self.requests.append((request.method, request.url.path, auth))
            if self.token is not None and auth != f"Bearer {self.token}":
                return error(401, "missing or wrong token")
            response: Response = await endpoint(request)
            self._check(request, response)
            return response

        return guarded

    def _check(self, request: Request, response: Response) -> None:
        """Record an answer the real API could not give for this request."""
        method, path = request.method, request.url.path
        template = operation_for(self.openapi, method, path)
        if template is None:
            self.wrong.append(f"{method} {path}: not an operation of the API")
            return
        media = (response.media_type or "").split(";")[0].strip()
        self.wrong += answer_problems(
            self.openapi, template, method, response.status_code, media, bytes(response.body)
        )


def sample() -> FakeApi:
    """Jobs with prefixes and words to match, runs in every outcome, one agent."""
    api = FakeApi(
        jobs=[
            make_job("demo/hello", ("demo",)),
            make_job("demo/hello world", ("demo",)),
            make_job("etl/load daily", ("etl",)),
            make_job("etl/load hourly", ("etl",)),
            make_job("reports/monthly summary"),
        ],
        job_errors=[
            {
                "job_id": "bad/job",
                "path": "bad/job.yaml",
                "key_path": "schedule.interval",
                "message": "expected a duration, got 'x'",
            }
        ],
        agents=[
            {
                "agent_id": "ssh:apsis@localhost",
                "kind": "ssh",
                "host": "localhost",
                "user": "apsis",
                "state": "connected",
                "version": "0.1.0",
                "epoch": 1,
                "pid": 4242,
                "port": 40123,
                "running": 1,
                "agent_running": 1,
                "outbox_pending": 0,
                "pending_starts": 0,
                "last_heartbeat": T0,
                "error": None,
            }
        ],
    )
    api.add_run(make_run("r1", "demo/hello", "success"), b"hello\n")
    api.add_run(make_run("r2", "demo/hello", "failure"), b"oops\n")
    api.add_run(make_run("r3", "etl/load daily", "error"))
    api.add_run(make_run("r4", "etl/load hourly", "skipped"))
    api.add_run(make_run("r5", "demo/hello world", "scheduled", {"date": "2026-11-26"}))
    api.add_run(make_run("r6", "demo/hello", "running"), b"partial", finish=(3, "success"))
    return copy.deepcopy(api)


@contextmanager
def serving(api: FakeApi) -> Iterator[FakeApi]:
    """Serve `api` on 127.0.0.1 on a free port until the block ends; `api.url` is its URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(api.app(), log_level="warning", lifespan="off", ws="none")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 5.0
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("the stand-in API did not start")
            time.sleep(0.01)
        api.url = f"http://127.0.0.1:{port}"
        yield api
    finally:
        server.should_exit = True
        thread.join(5.0)
        sock.close()
    assert not api.wrong, "the stand-in API answered what the real one would not:\n" + "\n".join(
        api.wrong
    )
