"""The REST API under /api/v1 (docs/api.md): each handler answers a typed value of
`views`; errors map to statuses in one table."""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse as StarletteJSON
from starlette.responses import Response
from starlette.routing import Route

from apsis_common import __version__
from apsis_common.errors import (
    ApsisError,
    AuthError,
    BadInput,
    Conflict,
    Forbidden,
    NotFound,
    Unavailable,
)
from apsis_common.states import State
from apsis_common.times import parse_time
from apsis_server.api.checks import checks_endpoint
from apsis_server.api.dependencies import dependencies
from apsis_server.api.metrics import Metrics
from apsis_server.api.openapi import document
from apsis_server.api.views import (
    AgentList,
    Alive,
    Error,
    JobAnswer,
    JobList,
    LeaderInfo,
    Reload,
    RunAnswer,
    RunLog,
    RunMeta,
    RunPage,
    ServerInfo,
    Servers,
    Version,
    agent_view,
    encode,
    job_view,
    log_view,
    program_view,
    run_view,
    time_text,
)
from apsis_server.core.extensions import Extensions
from apsis_server.core.fields import Invalid
from apsis_server.core.jobs import ADHOC_JOB, Job, JobError, next_times
from apsis_server.core.programs import parse_program, signal_number
from apsis_server.core.runs import Run
from apsis_server.engine.engine import Engine
from apsis_server.engine.operations import Operations
from apsis_server.leadership import Leadership
from apsis_server.store.base import OutputName, RunFilter, output_name
from apsis_server.store.lease import Role

# The one table from error to status.
STATUS: list[tuple[type[Exception], int]] = [
    (Forbidden, 403),
    (AuthError, 401),
    (NotFound, 404),
    (Conflict, 409),
    (BadInput, 400),
    (Unavailable, 503),
    # Anything else that says the input is wrong or names nothing known.
    (ValueError, 400),
    (LookupError, 404),
]

Handler = Callable[[Request], Awaitable[Response]]


def error_response(exc: Exception) -> JSONResponse:
    for cls, status in STATUS:
        if isinstance(exc, cls):
            return JSONResponse(Error(str(exc)), status_code=status)
    return JSONResponse(Error("internal error"), status_code=500)


def _handled(handler: Handler) -> Handler:
    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except (ApsisError, LookupError, ValueError) as exc:
            return error_response(exc)

    return wrapped


def _engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


def _extensions(request: Request) -> Extensions:
    """The program types (and the rest) of the installed plugins, loaded at start."""
    extensions: Extensions = request.app.state.extensions
    return extensions


def _operations(request: Request) -> Operations:
    operations: Operations = request.app.state.operations
    return operations


class JSONResponse(StarletteJSON):
    """An answer, a value of `views`, as JSON (`views.encode`): text that is not valid
    Unicode (a lone surrogate kept from an older version) is escaped, never an error
    that hides every run."""

    def render(self, content: Any) -> bytes:
        return encode(content)


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise BadInput("body is not valid JSON") from None
    except RecursionError:
        raise BadInput("body is nested too deeply") from None
    if not isinstance(body, dict):
        raise BadInput("body must be a JSON object")
    _check_text(body)
    return body


def _check_text(value: Any) -> None:
    """BadInput for text a process or the store could not take: a lone surrogate
    (`"\\ud800"` is valid JSON, but no UTF-8) or a NUL."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack += [*item.keys(), *item.values()]
        elif isinstance(item, list):
            stack += item
        elif isinstance(item, str):
            if "\0" in item:
                raise BadInput("text in the body holds a NUL character")
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise BadInput("text in the body is not valid Unicode (a lone surrogate)") from None


def _int(request: Request, name: str, default: int, low: int, high: int) -> int:
    value = request.query_params.get(name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise BadInput(f"{name} must be an integer, got {value!r}") from None
    if not low <= number <= high:
        raise BadInput(f"{name} must be between {low} and {high}")
    return number


def _float(request: Request, name: str) -> float | None:
    value = request.query_params.get(name)
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        raise BadInput(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise BadInput(f"{name} must be a finite number, got {value!r}")
    return number


# Times a run may be scheduled at: the years 1 to 9999, as the API can show them.
_EARLIEST, _LATEST = -62135596800.0, 253402300799.0


def _all_job_errors(request: Request) -> list[JobError]:
    """Why job files did not load at the last (re)load."""
    errors: list[JobError] = request.app.state.job_errors
    return errors


def _job_errors(request: Request, job_id: str) -> list[JobError]:
    """Why the file of `job_id` did not load at the last (re)load, if it did not."""
    return [e for e in _all_job_errors(request) if e.job_id == job_id]


def _args(value: Any) -> dict[str, str]:
    """Run args: names to text (a number is taken as its text)."""
    if not isinstance(value, dict):
        raise BadInput("args must be an object of name: value")
    args = {}
    for name, arg in value.items():
        finite = not isinstance(arg, float) or math.isfinite(arg)
        if isinstance(arg, bool) or not isinstance(arg, str | int | float) or not finite:
            raise BadInput(f"arg {name!r} must be text, got {json.dumps(arg)}")
        args[str(name)] = str(arg)
    return args


def _when(value: Any) -> float:
    when = parse_time(value)
    if not _EARLIEST <= when <= _LATEST:  # also false for NaN
        raise BadInput(f"time out of range: {value!r}")
    return when


def _runs_page(engine: Engine, run_filter: RunFilter) -> JSONResponse:
    now = engine.clock()
    runs = engine.store.query(run_filter)
    # Unfinished runs live in memory and are newer in state than the store's copy.
    runs = [engine.runs.get(r.run_id, r) for r in runs]
    more = len(runs) == run_filter.limit
    return JSONResponse(
        RunPage([run_view(r, now) for r in runs], runs[-1].run_id if more else None)
    )


def _filter(request: Request, job_id: str | None) -> RunFilter:
    q = request.query_params
    states = []
    for name in q.getlist("state"):
        for part in name.split(","):
            try:
                states.append(State(part.strip()))
            except ValueError:
                raise BadInput(f"unknown state {part!r}") from None
    args: dict[str, str] = {}
    for pair in filter(None, (q.get("args") or "").split(",")):
        name, eq, value = pair.partition("=")
        if not eq:
            raise BadInput(f"args must be name=value pairs, got {pair!r}")
        args[name.strip()] = value
    before = q.get("before")
    if before is not None and not _RUN_ID.fullmatch(before):
        raise BadInput(f"before must be a run id, got {before!r}")
    # `job=`: part of a job id, or with a leading "/" the start of one (a folder).
    job = q.get("job") or ""
    return RunFilter(
        job_id=job_id if job_id is not None else q.get("job_id"),
        job_text=job if job and not job.startswith("/") else None,
        job_prefix=job[1:] if job.startswith("/") and job[1:] else None,
        states=tuple(states),
        label=q.get("label"),
        args=args,
        since=parse_time(q["since"]) if "since" in q else None,
        until=parse_time(q["until"]) if "until" in q else None,
        before=before,
        limit=_int(request, "limit", 100, 1, 1000),
    )


# A run id the store can hold: `r` and a 64-bit number, ASCII digits only.
_RUN_ID = re.compile(r"r[0-9]{1,18}")
# How long POST /runs waits for an agent to accept a run's start.
START_WAIT = 2.0


def _run_id(request: Request) -> str:
    run_id = str(request.path_params["run_id"])
    if run_id.isdigit():
        run_id = "r" + run_id
    if not _RUN_ID.fullmatch(run_id):
        raise NotFound(f"no run {run_id!r}")
    return run_id


# -- handlers ---------------------------------------------------------------------


async def alive(request: Request) -> Response:
    """With `?leader`, 503 unless this server leads and takes writes: the check a
    load balancer in front of servers sharing a database sends writes by."""
    if "leader" in request.query_params:
        leadership: Leadership = request.app.state.leadership
        if not leadership.ready:
            url = leadership.leader_url()
            where = f"the leader is at {url}" if url else "no server leads right now"
            raise Unavailable(f"this server is a standby: {where}")
    return JSONResponse(Alive())


async def version(request: Request) -> Response:
    return JSONResponse(Version(__version__))


async def servers(request: Request) -> Response:
    leadership: Leadership = request.app.state.leadership
    leader, seen = await leadership.survey()
    one = leadership.epoch == 0  # the only server (SQLite): no lease, no deadline
    return JSONResponse(
        Servers(
            server_id=leadership.server_id,
            role="leader" if leadership.leading else "standby",
            epoch=leadership.epoch,
            leader=None
            if leader is None
            else LeaderInfo(
                leader.holder.partition("/")[0],  # the holder is ID/a process's token
                leader.url,
                leader.epoch,
                time_text(leader.since.timestamp()),
                None if one else time_text(leader.deadline.timestamp()),
            ),
            servers=[
                ServerInfo(
                    s.server_id,
                    s.url,
                    "leader" if s.role == Role.LEADER else "standby",
                    s.epoch,
                    time_text(s.last_seen.timestamp()),
                )
                for s in seen
            ],
        )
    )


async def stats(request: Request) -> Response:
    metrics: Metrics = request.app.state.metrics
    return JSONResponse(metrics.stats())


async def openapi_json(request: Request) -> Response:
    return JSONResponse(document())


def _next_times(engine: Engine, job: Job, count: int = 5) -> list[float]:
    return [due.time for due in next_times(job, engine.clock(), count)]


async def jobs(request: Request) -> Response:
    engine = _engine(request)
    label = request.query_params.get("label")
    text = (request.query_params.get("q") or "").lower()
    out = []
    for job in sorted(engine.jobs.values(), key=lambda j: j.job_id):
        if label and label not in job.labels:
            continue
        if text and text not in f"{job.job_id} {job.description}".lower():
            continue
        out.append(job_view(job, _next_times(engine, job)))
    return JSONResponse(JobList(out, _all_job_errors(request)))


async def job(request: Request) -> Response:
    engine = _engine(request)
    job_id = str(request.path_params["job_id"])
    found = engine.jobs.get(job_id)
    errors = _job_errors(request, job_id)
    if found is None:
        if errors:
            return JSONResponse(Error(f"job {job_id} is invalid", errors), 422)
        raise NotFound(f"no job {job_id!r}")
    # With errors, the file no longer loads and the last good definition is in use.
    view = job_view(found, _next_times(engine, found, 10))
    return JSONResponse(JobAnswer(view, errors) if errors else JobAnswer(view))


async def job_runs(request: Request) -> Response:
    engine = _engine(request)
    job_id = str(request.path_params["job_id"])
    run_filter = _filter(request, job_id)
    # A removed job's history is still listed; a job never heard of is a 404.
    known = job_id in engine.jobs or bool(_job_errors(request, job_id))
    if not known and not engine.store.query(RunFilter(job_id=job_id, limit=1)):
        raise NotFound(f"no job {job_id!r}")
    return _runs_page(engine, run_filter)


async def runs(request: Request) -> Response:
    return _runs_page(_engine(request), _filter(request, None))


async def schedule(request: Request) -> Response:
    engine = _engine(request)
    wait = _float(request, "wait")  # checked first: a bad request creates nothing
    body = await _body(request)
    when = _when(body["time"]) if body.get("time") is not None else None
    args = _args(body.get("args") or {})
    if "program" in body:
        if args:
            raise BadInput("args go with a job_id; a program given directly has no params")
        try:
            program = parse_program(body["program"], registry=_extensions(request).programs)
        except Invalid as exc:
            raise BadInput(str(exc)) from None
        run = engine.schedule_program(Job(job_id=ADHOC_JOB, params=(), program=program), when)
    elif isinstance(body.get("job_id"), str):
        job_id = body["job_id"]
        errors = _job_errors(request, job_id)
        if job_id not in engine.jobs and errors:
            return JSONResponse(Error(f"job {job_id} is invalid", errors), 422)
        run = engine.schedule(job_id, args, when, commit=False)
        await engine.committed()  # one transaction for the requests of one loop turn
    else:
        raise BadInput("give job_id (and args) or program")
    if wait is not None:
        run = await engine.answers.finished(run.run_id, min(wait, 3600.0))
    else:
        # A run handed to an agent is answered once the agent holds its start (or it
        # left `starting`): a client submitting in a loop goes at the pace agents
        # take runs, instead of piling up runs in `starting` behind them.
        run = await engine.answers.started(run.run_id, START_WAIT)
    return JSONResponse(_run_answer(run, engine.clock()), status_code=201)


def _run_answer(run: Run, now: float) -> RunAnswer:
    """A run with the program it runs (once bound)."""
    program = None if run.program is None else program_view(run.program)
    return RunAnswer(run_view(run, now), program)


async def run(request: Request) -> Response:
    engine = _engine(request)
    return JSONResponse(_run_answer(engine.get(_run_id(request)), engine.clock()))


async def run_log(request: Request) -> Response:
    engine = _engine(request)
    run_id = engine.get(_run_id(request)).run_id
    return JSONResponse(RunLog([log_view(e) for e in engine.store.log(run_id)]))


async def run_dependencies(request: Request) -> Response:
    engine = _engine(request)
    return JSONResponse(dependencies(engine, engine.get(_run_id(request))))


async def run_meta(request: Request) -> Response:
    engine = _engine(request)
    run = engine.get(_run_id(request))
    store = engine.store
    meta = store.meta(run.run_id)
    if not run.state.finished and run.proc_id is not None:
        # While it runs, the output stored so far (its exit gives the final lengths).
        meta["output_length"] = store.output_length(run.run_id, OutputName.STDOUT)
        stderr = store.output_length(run.run_id, OutputName.STDERR)
        if stderr:
            meta["stderr_length"] = stderr
    return JSONResponse(RunMeta(meta))


async def run_output(request: Request) -> Response:
    engine = _engine(request)
    run_id = engine.get(_run_id(request)).run_id
    try:
        name = output_name(request.query_params.get("name"))
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    length = engine.store.output_length(run_id, name)
    start = _int(request, "start", 0, 0, 2**62)
    stop = _int(request, "stop", length, 0, 2**62)
    data = engine.store.output(run_id, start, max(start, min(stop, length)), name)
    headers = {"x-apsis-output-length": str(length)}
    if request.query_params.get("format", "raw") == "text":
        return Response(data.decode("utf-8", "replace"), media_type="text/plain", headers=headers)
    return Response(data, media_type="application/octet-stream", headers=headers)


def _operation(name: str) -> Handler:
    async def handler(request: Request) -> Response:
        engine = _engine(request)
        run_id = _run_id(request)
        operation: Callable[[str], Any] = getattr(_operations(request), name)
        return JSONResponse(RunAnswer(run_view(operation(run_id), engine.clock())))

    return handler


async def signal(request: Request) -> Response:
    engine = _engine(request)
    try:
        number = signal_number(str(request.path_params["signal"]), "signal")
    except Invalid as exc:
        raise BadInput(str(exc)) from None
    new = _operations(request).signal(_run_id(request), number)
    return JSONResponse(RunAnswer(run_view(new, engine.clock())))


async def mark(request: Request) -> Response:
    engine = _engine(request)
    try:
        state = State(str(request.path_params["state"]))
    except ValueError:
        raise BadInput(f"unknown state {request.path_params['state']!r}") from None
    body = await _body(request)
    message = body.get("message")
    new = _operations(request).mark(_run_id(request), state, str(message) if message else None)
    return JSONResponse(RunAnswer(run_view(new, engine.clock())))


async def force_error(request: Request) -> Response:
    engine = _engine(request)
    body = await _body(request)
    message = str(body.get("message") or "set to error by hand")
    new = _operations(request).force_error(_run_id(request), message)
    return JSONResponse(RunAnswer(run_view(new, engine.clock())))


async def reload(request: Request) -> Response:
    answer = request.app.state.reload()
    return JSONResponse(
        Reload(
            added=list(answer["added"]),
            changed=list(answer["changed"]),
            removed=list(answer["removed"]),
            kept=list(answer["kept"]),
            errors=_all_job_errors(request),  # as the reload just left them
        )
    )


async def agents(request: Request) -> Response:
    engine = _engine(request)
    registry = request.app.state.registry
    active = (State.STARTING, State.RUNNING, State.STOPPING)
    running = Counter(r.agent_id for r in engine.runs.values() if r.state in active)
    out = [agent_view(c, running.get(c.agent_id, 0)) for c in registry.agents.values()]
    return JSONResponse(AgentList(out))


def routes() -> list[Route]:
    r = "/api/v1"
    table: list[tuple[str, Handler, list[str]]] = [
        ("/alive", alive, ["GET"]),
        ("/version", version, ["GET"]),
        ("/servers", servers, ["GET"]),
        ("/stats", stats, ["GET"]),
        ("/openapi.json", openapi_json, ["GET"]),
        ("/jobs", jobs, ["GET"]),
        ("/jobs/reload", reload, ["POST"]),
        ("/jobs/{job_id:path}/runs", job_runs, ["GET"]),
        ("/jobs/{job_id:path}", job, ["GET"]),
        ("/runs", runs, ["GET"]),
        ("/runs", schedule, ["POST"]),
        ("/runs/{run_id}", run, ["GET"]),
        ("/runs/{run_id}/log", run_log, ["GET"]),
        ("/runs/{run_id}/meta", run_meta, ["GET"]),
        ("/runs/{run_id}/dependencies", run_dependencies, ["GET"]),
        ("/runs/{run_id}/output", run_output, ["GET"]),
        ("/runs/{run_id}/signal/{signal}", signal, ["POST"]),
        ("/runs/{run_id}/mark/{state}", mark, ["POST"]),
        ("/runs/{run_id}/error", force_error, ["POST"]),
        ("/agents", agents, ["GET"]),
        ("/checks", checks_endpoint, ["GET"]),
    ]
    table += [
        (f"/runs/{{run_id}}/{op}", _operation(op), ["POST"])
        for op in ("start", "skip", "stop", "kill", "rerun")
    ]
    return [Route(r + path, _handled(h), methods=m) for path, h, m in table]
