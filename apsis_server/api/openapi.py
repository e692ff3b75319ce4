"""The OpenAPI 3.1 document of the REST API, served at `GET /api/v1/openapi.json`.

Written by hand to match docs/api.md and the handlers in `api.py`;
tests/integration/test_openapi.py checks it lists exactly the app's routes and that
real answers validate against its schemas. The websocket feeds (`/api/v1/summary`,
`/api/v1/runs/{run_id}/updates`) are described in docs/api.md, not here.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from apsis_common import __version__
from apsis_common.states import State

JSON = "application/json"
Schema = dict[str, Any]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(kind: str, **extra: Any) -> Schema:
    return {"type": [kind, "null"], **extra}


TIME = {"type": "string", "description": "ISO 8601 in UTC, e.g. 2026-11-26T21:00:00.000000Z"}
STRINGS = {"type": "array", "items": {"type": "string"}}

SCHEMAS: dict[str, Schema] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {"type": "string"},
            "errors": {"type": "array", "items": _ref("JobError")},
        },
    },
    "Run": {
        "type": "object",
        "required": [
            "run_id",
            "job_id",
            "args",
            "state",
            "schedule_time",
            "stop_time",
            "times",
            "message",
            "ad_hoc",
            "rerun_of",
            "labels",
            "elapsed",
        ],
        "additionalProperties": False,
        "properties": {
            "run_id": {"type": "string", "pattern": "^r[0-9]+$"},
            "job_id": {"type": "string"},
            "args": {"type": "object", "additionalProperties": {"type": "string"}},
            "state": {"enum": [s.value for s in State if s != State.NEW]},
            "schedule_time": _nullable("string"),
            "stop_time": _nullable(
                "string", description="when a stop schedule, or a stop by hand, stops it"
            ),
            "times": {"type": "object", "additionalProperties": TIME},
            "message": _nullable("string"),
            "ad_hoc": {"type": "boolean"},
            "rerun_of": _nullable("string"),
            "labels": STRINGS,
            "elapsed": _nullable("number", description="seconds running, null if it never ran"),
        },
    },
    "Job": {
        "type": "object",
        "required": [
            "job_id",
            "params",
            "program",
            "schedules",
            "conditions",
            "actions",
            "metadata",
            "description_html",
            "labels",
            "next_times",
        ],
        "additionalProperties": False,
        "properties": {
            "job_id": {"type": "string"},
            "params": STRINGS,
            "program": {"type": "object", "required": ["type"]},
            "schedules": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["type", "enabled", "text"],
                    "properties": {
                        "type": {"type": "string"},
                        "enabled": {"type": "boolean"},
                        "text": {"type": "string"},
                    },
                },
            },
            "conditions": {"type": "array"},
            "actions": {"type": "array"},
            "metadata": {"type": "object"},
            "description_html": {
                "type": "string",
                "description": (
                    "metadata.description rendered from Markdown (CommonMark, raw HTML off)"
                    " and sanitized: only p, br, hr, h3-h6, lists, blockquote, pre, code,"
                    " strong, em, tables and links to http(s), mailto or relative URLs"
                    ' (rel="noopener noreferrer"); "" for no description'
                ),
            },
            "labels": STRINGS,
            "next_times": {"type": "array", "items": TIME},
        },
    },
    "JobError": {
        "type": "object",
        "required": ["job_id", "path", "key_path", "message"],
        "properties": {
            "job_id": {"type": "string"},
            "path": {"type": "string"},
            "key_path": {"type": "string"},
            "message": {"type": "string"},
        },
    },
    "LogEntry": {
        "type": "object",
        "required": ["time", "state", "message"],
        "additionalProperties": False,
        "properties": {
            "time": TIME,
            "state": {"enum": [*(s.value for s in State), None]},
            "message": {"type": "string"},
        },
    },
    "Agent": {
        "type": "object",
        "required": ["agent_id", "host", "user", "state", "version", "running", "last_heartbeat"],
        "properties": {
            "agent_id": {"type": "string"},
            "host": {"type": "string"},
            "user": _nullable("string"),
            "state": {"type": "string", "description": "connecting, connected, disconnected…"},
            "version": {"type": "string"},
            "epoch": {"type": "integer"},
            "pid": {"type": "integer"},
            "port": {"type": "integer"},
            "running": {"type": "integer", "minimum": 0},
            "last_heartbeat": _nullable("string"),
            "error": _nullable("string"),
        },
    },
    "RunPage": {
        "type": "object",
        "required": ["runs", "next"],
        "properties": {
            "runs": {"type": "array", "items": _ref("Run")},
            "next": _nullable("string", description="pass as `before` for the next page"),
        },
    },
    "RunAnswer": {"type": "object", "required": ["run"], "properties": {"run": _ref("Run")}},
    "Stats": {
        "type": "object",
        "required": [
            "version",
            "start_time",
            "uptime",
            "jobs",
            "runs",
            "runs_total",
            "transitions",
            "agents",
            "loop_latency",
            "schedule_lateness",
            "store_bytes",
            "store_error",
        ],
        "properties": {
            "version": {"type": "string"},
            "start_time": TIME,
            "uptime": {"type": "number", "minimum": 0},
            "jobs": {"type": "integer", "minimum": 0},
            "runs": {
                "type": "object",
                "description": "unfinished runs by state",
                "additionalProperties": {"type": "integer", "minimum": 0},
            },
            "runs_total": {"type": "integer", "minimum": 0},
            "transitions": {"type": "integer", "minimum": 0},
            "agents": {"type": "object", "additionalProperties": {"type": "integer"}},
            "loop_latency": {
                "type": "object",
                "description": "event-loop lag over the last minute, seconds",
                "required": ["last", "max", "mean"],
                "properties": {k: _nullable("number") for k in ("last", "max", "mean")},
            },
            "schedule_lateness": {
                "type": "object",
                "required": ["count", "mean"],
                "properties": {"count": {"type": "integer"}, "mean": _nullable("number")},
            },
            "store_bytes": {"type": "integer", "minimum": 0},
            "store_error": {
                **_nullable("string"),
                "description": "why changes wait in memory, unwritten; null when written",
            },
        },
    },
}

ERRORS = {
    "400": "bad input, or a Host that is not a name of this server",
    "401": "no valid API token (when tokens are configured)",
    "403": "a browser request from another origin, or a read-only token on an operation",
    "404": "no such job or run",
    "409": "the run's state does not allow it",
    "413": "a body over api.max_body",
    "415": "a body that is not application/json",
    "422": "the job failed to load",
}


def _answer(schema: Schema, description: str = "OK") -> Schema:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _object(required: list[str], **properties: Schema) -> Schema:
    return {"type": "object", "required": required, "properties": properties}


def _op(
    summary: str,
    ok: Schema,
    errors: tuple[str, ...] = (),
    params: list[Schema] | None = None,
    body: Schema | None = None,
    status: str = "200",
    post: bool = False,
) -> Schema:
    # Any request may meet the gate (foreign Host or Origin) and the token guard.
    codes = sorted({*errors, "400", "401", "403", *(("413", "415") if post else ())})
    responses: Schema = {status: ok}
    responses.update({c: _answer(_ref("Error"), ERRORS[c]) for c in codes})
    op: Schema = {"summary": summary, "responses": responses}
    if params:
        op["parameters"] = params
    if body is not None:
        op["requestBody"] = {"required": False, "content": {JSON: {"schema": body}}}
    return op


def _path_param(name: str, description: str) -> Schema:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string"},
    }


def _query(name: str, schema: Schema, description: str) -> Schema:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
    }


RUN_ID = _path_param("run_id", "a run id, `r42` (or `42`)")
JOB_ID = _path_param("job_id", "a job id; may contain slashes (`demo/hello`)")
RUN_QUERY = [
    _query("state", {"type": "string"}, "state, or states separated by commas"),
    _query("label", {"type": "string"}, "runs with this label"),
    _query("since", {"type": "string"}, "schedule time at or after (ISO 8601 or epoch seconds)"),
    _query("until", {"type": "string"}, "schedule time before (ISO 8601 or epoch seconds)"),
    _query("args", {"type": "string"}, "`name=value,name=value`"),
    _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "page size (100)"),
    _query("before", {"type": "string", "pattern": "^r[0-9]+$"}, "keyset cursor: `next`"),
]
RUN_OK = _answer(_ref("RunAnswer"))
PAGE_OK = _answer(_ref("RunPage"))
MESSAGE_BODY = {"type": "object", "properties": {"message": {"type": "string"}}}
SCHEDULE_BODY = {
    "oneOf": [
        {
            "type": "object",
            "required": ["job_id"],
            "properties": {
                "job_id": {"type": "string"},
                "args": {"type": "object", "additionalProperties": {"type": "string"}},
                "time": _nullable("string", description="when; now if absent or null"),
            },
        },
        {
            "type": "object",
            "required": ["program"],
            "properties": {
                "program": {"type": "object", "required": ["type"], "description": "ad hoc"},
                "time": _nullable("string"),
            },
        },
    ]
}


def _operations() -> dict[str, Schema]:
    paths: dict[str, Schema] = {
        "/api/v1/alive": {
            "get": _op(
                "liveness (open even with tokens)",
                _answer(_object(["alive"], alive={"const": True})),
            )
        },
        "/api/v1/version": {
            "get": _op(
                "the server version", _answer(_object(["version"], version={"type": "string"}))
            )
        },
        "/api/v1/stats": {
            "get": _op("counts, loop latency, uptime, store size", _answer(_ref("Stats")))
        },
        "/api/v1/openapi.json": {"get": _op("this document", _answer({"type": "object"}))},
        "/api/v1/jobs": {
            "get": _op(
                "jobs, and the files that failed to load",
                _answer(
                    _object(
                        ["jobs", "errors"],
                        jobs={"type": "array", "items": _ref("Job")},
                        errors={"type": "array", "items": _ref("JobError")},
                    )
                ),
                params=[
                    _query("label", {"type": "string"}, "jobs with this label"),
                    _query("q", {"type": "string"}, "text in the job id or description"),
                ],
            )
        },
        "/api/v1/jobs/reload": {
            "post": _op(
                "reload the jobs directory",
                _answer(
                    _object(
                        ["added", "changed", "removed", "kept", "errors"],
                        added=STRINGS,
                        changed=STRINGS,
                        removed=STRINGS,
                        kept=STRINGS,
                        errors={"type": "array", "items": _ref("JobError")},
                    )
                ),
                post=True,
            )
        },
        "/api/v1/jobs/{job_id}": {
            "get": _op(
                "one job (with `errors` if its file no longer loads and the last good"
                " definition is in use)",
                _answer(
                    _object(
                        ["job"],
                        job=_ref("Job"),
                        errors={"type": "array", "items": _ref("JobError")},
                    )
                ),
                ("404", "422"),
                [JOB_ID],
            )
        },
        "/api/v1/jobs/{job_id}/runs": {
            "get": _op(
                "the job's runs, newest first", PAGE_OK, ("400", "404"), [JOB_ID, *RUN_QUERY]
            )
        },
        "/api/v1/runs": {
            "get": _op(
                "runs, newest first, keyset-paginated",
                PAGE_OK,
                ("400",),
                [_query("job_id", {"type": "string"}, "runs of this job"), *RUN_QUERY],
            ),
            "post": _op(
                "schedule a run of a job, or of an ad-hoc program",
                _answer(_ref("RunAnswer"), "created"),
                ("400", "404", "422"),
                [
                    _query(
                        "wait",
                        {"type": "number", "maximum": 3600},
                        "block up to this many seconds for the run to finish",
                    )
                ],
                SCHEDULE_BODY,
                status="201",
                post=True,
            ),
        },
        "/api/v1/runs/{run_id}": {"get": _op("one run", RUN_OK, ("404",), [RUN_ID])},
        "/api/v1/runs/{run_id}/log": {
            "get": _op(
                "the run log",
                _answer(_object(["log"], log={"type": "array", "items": _ref("LogEntry")})),
                ("404",),
                [RUN_ID],
            )
        },
        "/api/v1/runs/{run_id}/meta": {
            "get": _op(
                "the run's metadata",
                _answer(_object(["meta"], meta={"type": "object"})),
                ("404",),
                [RUN_ID],
            )
        },
        "/api/v1/runs/{run_id}/dependencies": {
            "get": _op(
                "what the run waits for, and which waiting runs wait for it",
                _answer(
                    _object(
                        ["waits_for", "waited_by"],
                        waits_for={"type": "array", "items": {"type": "object"}},
                        waited_by={"type": "array", "items": {"type": "string"}},
                    )
                ),
                ("404",),
                [RUN_ID],
            )
        },
        "/api/v1/runs/{run_id}/output": {
            "get": _op(
                "output bytes",
                {
                    "description": "the bytes in [start, stop)",
                    "headers": {
                        "X-Apsis-Output-Length": {
                            "schema": {"type": "integer"},
                            "description": "the full length",
                        }
                    },
                    "content": {
                        "application/octet-stream": {"schema": {"type": "string"}},
                        "text/plain": {"schema": {"type": "string"}},
                    },
                },
                ("400", "404"),
                [
                    RUN_ID,
                    _query("start", {"type": "integer", "minimum": 0}, "first byte (0)"),
                    _query("stop", {"type": "integer", "minimum": 0}, "end byte (the length)"),
                    _query(
                        "format",
                        {"enum": ["raw", "text"]},
                        "raw bytes, or text with bad UTF-8 replaced",
                    ),
                ],
            )
        },
        "/api/v1/runs/{run_id}/signal/{signal}": {
            "post": _op(
                "send a signal",
                RUN_OK,
                ("400", "404", "409"),
                [RUN_ID, _path_param("signal", "a name (TERM, SIGTERM) or number")],
                post=True,
            )
        },
        "/api/v1/runs/{run_id}/mark/{state}": {
            "post": _op(
                "re-mark a finished run",
                RUN_OK,
                ("400", "404", "409"),
                [RUN_ID, _path_param("state", "success|failure|error|skipped")],
                MESSAGE_BODY,
                post=True,
            )
        },
        "/api/v1/runs/{run_id}/error": {
            "post": _op(
                "put an unfinished run in error",
                RUN_OK,
                ("400", "404", "409"),
                [RUN_ID],
                MESSAGE_BODY,
                post=True,
            )
        },
        "/api/v1/agents": {
            "get": _op(
                "agents and their state",
                _answer(_object(["agents"], agents={"type": "array", "items": _ref("Agent")})),
            )
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus text format (needs a token when tokens are configured)",
                "responses": {
                    "200": {
                        "description": "metrics",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "401": _answer(_ref("Error"), ERRORS["401"]),
                },
            }
        },
    }
    for op in ("start", "skip", "stop", "kill", "rerun"):
        paths[f"/api/v1/runs/{{run_id}}/{op}"] = {
            "post": _op(f"{op} the run", RUN_OK, ("400", "404", "409"), [RUN_ID], post=True)
        }
    return paths


def document() -> dict[str, Any]:
    """The whole OpenAPI document."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Apsis",
            "version": __version__,
            "description": "The Apsis scheduler's REST API (docs/api.md). Errors are "
            '`{"error": message}`. With API tokens configured, send '
            "`Authorization: Bearer TOKEN`.",
        },
        "servers": [{"url": "/"}],
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}, {}],
        "paths": _operations(),
    }


async def openapi_json(request: Request) -> Response:
    """`GET /api/v1/openapi.json`."""
    return JSONResponse(document())
