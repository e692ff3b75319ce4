"""The OpenAPI document: it lists exactly the app's routes, its schemas are valid
JSON Schema generated from the answer types, real answers of a real server validate
against it, and so must the CLI's test double's."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator
from starlette.routing import Route

from apsis_server.api.openapi import schemas
from apsis_server.app import build_app
from apsis_server.config import Config
from tests.cli_fixture import sample, serving
from tests.harness import Server, running_server, wait_for
from tests.openapi_schema import check_answer, operations, path_params, refs

pytestmark = pytest.mark.timeout(60)

JOBS = {
    "hello": "program: {type: shell, command: 'echo hello'}\nlabels: [demo]\n",
    "greet": "params: [name]\nprogram: {type: shell, command: 'echo hi {{ name }}'}\n",
    "slow": "program: {type: shell, command: 'sleep 30'}\n",
    "later": "program: {type: no-op}\nschedule: {type: interval, interval: 1 day}\n",
    "broken": "program: 42\n",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("openapi"), JOBS) as server:
        yield server


@pytest.fixture(scope="module")
def doc(server: Server) -> dict[str, Any]:
    document: dict[str, Any] = server.get("/openapi.json")
    return document


def app_routes(tmp: Path) -> set[tuple[str, str]]:
    app = build_app(Config(jobs=tmp / "jobs", state=tmp / "state"))
    found = set()
    for route in app.routes:
        if not isinstance(route, Route):
            continue
        if not (route.path.startswith("/api/v1/") or route.path == "/metrics"):
            continue
        path = route.path.replace(":path}", "}")
        found |= {(path, m) for m in route.methods or () if m != "HEAD"}
    return found


def test_document_lists_every_route(doc: dict[str, Any], tmp_path: Path) -> None:
    documented = {(path, method) for path, method, _ in operations(doc)}
    assert documented == app_routes(tmp_path)


def test_document_is_well_formed(doc: dict[str, Any]) -> None:
    assert doc["openapi"].startswith("3.1")
    for schema in doc["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)
    for path, method, op in operations(doc):
        declared = [p["name"] for p in op.get("parameters", []) if p["in"] == "path"]
        assert declared == path_params(path), f"{method} {path}"
        assert op["responses"], f"{method} {path}"
        for status, answer in op["responses"].items():
            assert status.isdigit(), f"{method} {path} {status}"
            for media in answer.get("content", {}).values():
                Draft202012Validator.check_schema(media["schema"])
    components = {f"#/components/schemas/{name}" for name in doc["components"]["schemas"]}
    assert refs(doc) <= components


def test_schemas_are_the_answer_types(doc: dict[str, Any]) -> None:
    """The served schemas are those generated from `views.py`, every object closed:
    an answer holds exactly its type's fields."""
    assert doc["components"]["schemas"] == schemas()
    for name in ("Run", "Job", "LogEntry", "Agent", "JobError", "Error", "Stats"):
        schema = doc["components"]["schemas"][name]
        assert schema["type"] == "object" and schema["additionalProperties"] is False, name
    run = doc["components"]["schemas"]["Run"]
    assert set(run["required"]) == set(run["properties"])  # nothing left out, even a null


def test_the_cli_double_answers_only_what_the_api_would() -> None:
    api = sample()
    del api.runs["r1"]["stop_time"]  # the real API always says it, null or not
    api.agents[0]["colour"] = "green"  # and never adds a field
    with pytest.raises(AssertionError) as failed, serving(api):
        assert httpx.get(api.url + "/api/v1/runs/r1", timeout=10).status_code == 200
        assert httpx.get(api.url + "/api/v1/agents", timeout=10).status_code == 200
        assert httpx.get(api.url + "/api/v1/runs/r2", timeout=10).status_code == 200
    message = str(failed.value)
    assert "'stop_time' is a required property" in message
    assert "'colour' was unexpected" in message
    assert len(api.wrong) == 2  # the good answer (r2) passed


def call(
    server: Server, doc: dict[str, Any], method: str, template: str, path: str, **kw: Any
) -> httpx.Response:
    response = httpx.request(method, server.url + path, timeout=30, **kw)
    check_answer(doc, template, method, response)
    return response


def test_real_answers_validate(server: Server, doc: dict[str, Any]) -> None:
    r = "/api/v1/runs/{run_id}"
    hello = call(
        server, doc, "POST", "/api/v1/runs", "/api/v1/runs?wait=10", json={"job_id": "hello"}
    ).json()["run"]["run_id"]
    assert server.run(hello)["state"] == "success"
    adhoc = call(
        server,
        doc,
        "POST",
        "/api/v1/runs",
        "/api/v1/runs",
        json={"program": {"type": "shell", "command": "echo adhoc"}},
    ).json()["run"]["run_id"]
    slow = server.schedule("slow")
    server.wait_state(slow, "running")
    later = wait_for(
        lambda: server.get("/runs?job_id=later&state=scheduled")["runs"], 10, "a scheduled run"
    )[0]["run_id"]
    gets = [
        ("/api/v1/alive", "/api/v1/alive"),
        ("/api/v1/version", "/api/v1/version"),
        ("/api/v1/stats", "/api/v1/stats"),
        ("/api/v1/openapi.json", "/api/v1/openapi.json"),
        ("/metrics", "/metrics"),
        ("/api/v1/agents", "/api/v1/agents"),
        ("/api/v1/jobs", "/api/v1/jobs"),
        ("/api/v1/jobs", "/api/v1/jobs?label=demo&q=hello"),
        ("/api/v1/jobs/{job_id}", "/api/v1/jobs/hello"),
        ("/api/v1/jobs/{job_id}", "/api/v1/jobs/later"),
        ("/api/v1/jobs/{job_id}", "/api/v1/jobs/nope"),
        ("/api/v1/jobs/{job_id}", "/api/v1/jobs/broken"),
        ("/api/v1/jobs/{job_id}/runs", "/api/v1/jobs/hello/runs?limit=1"),
        ("/api/v1/runs", "/api/v1/runs"),
        ("/api/v1/runs", "/api/v1/runs?state=success,running&limit=2"),
        ("/api/v1/runs", "/api/v1/runs?limit=0"),
        ("/api/v1/runs", "/api/v1/runs?since=yesterday"),
        (r, f"/api/v1/runs/{hello}"),
        (r, "/api/v1/runs/r999999"),
        (r + "/log", f"/api/v1/runs/{hello}/log"),
        (r + "/meta", f"/api/v1/runs/{hello}/meta"),
        (r + "/output", f"/api/v1/runs/{hello}/output"),
        (r + "/output", f"/api/v1/runs/{hello}/output?format=text&start=1&stop=3"),
        (r + "/output", f"/api/v1/runs/{hello}/output?start=-1"),
    ]
    for template, path in gets:
        call(server, doc, "GET", template, path)
    assert server.api("GET", f"/runs/{hello}/output").content == b"hello\n"
    posts = [
        ("/api/v1/runs", "/api/v1/runs", {}, 400),
        ("/api/v1/runs", "/api/v1/runs", {"job_id": "nope"}, 404),
        ("/api/v1/runs", "/api/v1/runs", {"job_id": "greet", "args": {}}, 400),
        ("/api/v1/runs", "/api/v1/runs", {"job_id": "greet", "args": {"name": "x"}}, 201),
        (r + "/start", f"/api/v1/runs/{hello}/start", None, 409),
        (r + "/rerun", f"/api/v1/runs/{hello}/rerun", None, 200),
        (r + "/mark/{state}", f"/api/v1/runs/{hello}/mark/failure", {"message": "by hand"}, 200),
        (r + "/mark/{state}", f"/api/v1/runs/{hello}/mark/bogus", None, 400),
        (r + "/signal/{signal}", f"/api/v1/runs/{slow}/signal/CONT", None, 200),
        (r + "/signal/{signal}", f"/api/v1/runs/{slow}/signal/NOPE", None, 400),
        (r + "/stop", f"/api/v1/runs/{slow}/stop", None, 200),
        (r + "/kill", f"/api/v1/runs/{adhoc}/kill", None, None),
        (r + "/skip", f"/api/v1/runs/{later}/skip", None, 200),
        (r + "/error", f"/api/v1/runs/{later}/error", {"message": "x"}, 409),
        ("/api/v1/jobs/reload", "/api/v1/jobs/reload", None, 200),
    ]
    for template, path, body, status in posts:
        response = call(server, doc, "POST", template, path, json=body)
        if status is not None:
            assert response.status_code == status, (path, response.text)
    server.wait_finished(slow)
