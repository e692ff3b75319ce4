"""The OpenAPI 3.1 document of the REST API, served at `GET /api/v1/openapi.json`.

Its schemas are generated from the answer types in `views.py` (msgspec writes JSON
Schema 2020-12, which OpenAPI 3.1 uses), so they are the shapes the server
encodes. The operations table (paths, parameters, request bodies, the statuses
each operation may answer) is written here by hand and names those types.
tests/integration/test_openapi.py checks it lists exactly the app's routes and
that real answers validate against it; the CLI's test double is held to it too
(tests/cli_fixture.py). The websocket feeds (`/api/v1/summary`,
`/api/v1/runs/{run_id}/updates`) are described in docs/api.md, not here.
"""

from __future__ import annotations

from typing import Any

import msgspec

from apsis_common import __version__
from apsis_server.api.views import (
    ANSWERS,
    AgentList,
    Alive,
    Checks,
    Dependencies,
    Error,
    JobAnswer,
    JobList,
    Reload,
    RunAnswer,
    RunLog,
    RunMeta,
    RunPage,
    Servers,
    Stats,
    Version,
)
from apsis_server.store.base import OutputName

JSON = "application/json"
REF = "#/components/schemas/{name}"
Schema = dict[str, Any]


def _ref(answer: type) -> Schema:
    return {"$ref": REF.format(name=answer.__name__)}


def _nullable(kind: str, **extra: Any) -> Schema:
    return {"type": [kind, "null"], **extra}


def schemas() -> dict[str, Schema]:
    """`components/schemas`: the answer types and every type they hold.

    Answers hold exactly their type's fields, so each object is closed
    (`additionalProperties: false`): a client or a test double that adds a field
    the server would not send is caught."""
    _, components = msgspec.json.schema_components(ANSWERS, ref_template=REF)
    for schema in components.values():
        if schema.get("type") == "object" and "properties" in schema:
            schema["additionalProperties"] = False
    return components


ERRORS = {
    "400": "bad input, or a Host that is not a name of this server",
    "401": "no valid API token (when tokens are configured)",
    "403": "a browser request from another origin, or a read-only token on an operation",
    "404": "no such job or run",
    "409": "the run's state does not allow it",
    "413": "a body over api.max_body",
    "415": "a body that is not application/json",
    "422": "the job failed to load",
    "503": "this server stands by (the error names the leader), or the store cannot be written",
}


def _answer(schema: Schema, description: str = "OK") -> Schema:
    return {"description": description, "content": {JSON: {"schema": schema}}}


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
    codes = sorted({*errors, "400", "401", "403", *(("413", "415", "503") if post else ())})
    responses: Schema = {status: ok}
    responses.update({c: _answer(_ref(Error), ERRORS[c]) for c in codes})
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
RUN_OK = _answer(_ref(RunAnswer))
PAGE_OK = _answer(_ref(RunPage))
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
                "liveness (open even with tokens); with `leader`, 503 unless this server leads",
                _answer(_ref(Alive)),
                errors=("503",),
                params=[
                    _query(
                        "leader",
                        {"type": "string"},
                        "answer 503 on a standby (a load balancer's check for the leader)",
                    )
                ],
            )
        },
        "/api/v1/version": {"get": _op("the server version", _answer(_ref(Version)))},
        "/api/v1/servers": {
            "get": _op("this server's role, who leads, every server seen", _answer(_ref(Servers)))
        },
        "/api/v1/stats": {
            "get": _op("counts, loop latency, uptime, store size", _answer(_ref(Stats)))
        },
        "/api/v1/openapi.json": {"get": _op("this document", _answer({"type": "object"}))},
        "/api/v1/jobs": {
            "get": _op(
                "jobs, and the files that failed to load",
                _answer(_ref(JobList)),
                params=[
                    _query("label", {"type": "string"}, "jobs with this label"),
                    _query("q", {"type": "string"}, "text in the job id or description"),
                ],
            )
        },
        "/api/v1/jobs/reload": {
            "post": _op(
                "reload the jobs directory",
                _answer(_ref(Reload)),
                post=True,
            )
        },
        "/api/v1/jobs/{job_id}": {
            "get": _op(
                "one job (with `errors` if its file no longer loads and the last good"
                " definition is in use)",
                _answer(_ref(JobAnswer)),
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
                [
                    _query("job_id", {"type": "string"}, "runs of this job"),
                    _query(
                        "job",
                        {"type": "string"},
                        "runs of jobs whose id holds this text (ignoring case), or with a"
                        " leading `/`, starts with the rest (`/demo/`: the jobs in demo/)",
                    ),
                    *RUN_QUERY,
                ],
            ),
            "post": _op(
                "schedule a run of a job, or of an ad-hoc program",
                _answer(_ref(RunAnswer), "created"),
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
                _answer(_ref(RunLog)),
                ("404",),
                [RUN_ID],
            )
        },
        "/api/v1/runs/{run_id}/meta": {
            "get": _op(
                "the run's metadata",
                _answer(_ref(RunMeta)),
                ("404",),
                [RUN_ID],
            )
        },
        "/api/v1/runs/{run_id}/dependencies": {
            "get": _op(
                "what the run waits for, and which waiting runs wait for it",
                _answer(_ref(Dependencies)),
                ("404",),
                [RUN_ID],
            )
        },
        "/api/v1/runs/{run_id}/output": {
            "get": _op(
                "output bytes: stdout and stderr merged (in the order the agent read"
                " them), or one of them",
                {
                    "description": "the bytes in [start, stop)",
                    "headers": {
                        "X-Apsis-Output-Length": {
                            "schema": {"type": "integer"},
                            "description": "the full length of that output",
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
                    _query(
                        "name",
                        {"enum": [n.value for n in OutputName]},
                        "which output (merged): a run with `stderr: merge` has its stderr in"
                        " stdout",
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
                _answer(_ref(AgentList)),
            )
        },
        "/api/v1/checks": {
            "get": _op(
                "the sanity checker's findings, checked now (none on a standby)",
                _answer(_ref(Checks)),
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
                    "401": _answer(_ref(Error), ERRORS["401"]),
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
            "schemas": schemas(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}, {}],
        "paths": _operations(),
    }
