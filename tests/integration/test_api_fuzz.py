"""Every operation of the OpenAPI document, fuzzed against a real server.

Hypothesis draws path parameters, query strings and bodies, valid and not, from
each operation's parameters (real job and run ids mixed with random text). Every
answer must come within the client timeout (no hangs), never be a 5xx, carry a
status the document lists (or a routing 404/405) and, when JSON, match the
schema. The local agent is disabled, so no fuzzed program ever executes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.harness import Server, running_server
from tests.openapi_schema import Operation, check_answer, operations

pytestmark = pytest.mark.timeout(120)

JOBS = {
    "hello": "program: {type: shell, command: 'echo hello'}\nlabels: [demo]\n",
    "greet": "params: [name]\nprogram: {type: shell, command: 'echo hi {{ name }}'}\n",
    "nested/noop": "program: {type: no-op, duration: 0.01}\n",
    "later": "program: {type: no-op}\nschedule: {type: interval, interval: 1 day}\n",
    "broken": "program: 42\n",
}
CONFIG = "agents: {local: {enabled: false}}\n"
EXAMPLES = 200
TIMEOUT = 10.0

text = st.text(st.characters(exclude_categories=["Cs"]), max_size=30)
numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
).map(lambda n: repr(n) if isinstance(n, float) else str(n))
json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(),
        text,
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(text, inner, max_size=4)),
    max_leaves=12,
)
STATES = [
    "new", "scheduled", "waiting", "starting", "running", "stopping",
    "success", "failure", "error", "skipped",
]  # fmt: skip
TIMES = ["2026-01-01T00:00:00Z", "2026-01-01T00:00:00", "1e12", "0", "-1", "nan", "tomorrow"]
PROGRAMS = st.fixed_dictionaries(
    {"type": st.one_of(st.sampled_from(["shell", "program", "no-op", "internal.vacuum"]), text)},
    optional={
        "command": text,
        "argv": st.lists(text, max_size=3),
        "duration": st.one_of(st.floats(0, 0.05), text),
        "success": json_values,
        "timeout": json_values,
        "host": json_values,
    },
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("fuzz"), JOBS, CONFIG) as server:
        for job_id in ("hello", "nested/noop"):
            server.schedule(job_id)
        server.post("/runs", {"job_id": "greet", "args": {"name": "x"}})
        yield server


@pytest.fixture(scope="module")
def doc(server: Server) -> dict[str, Any]:
    document: dict[str, Any] = server.get("/openapi.json")
    return document


def _run_ids(server: Server) -> list[str]:
    return [r["run_id"] for r in server.get("/runs?limit=20")["runs"]]


def path_value(name: str, run_ids: list[str]) -> st.SearchStrategy[str]:
    known = {
        "run_id": [*run_ids, "1", "r0", "r99999999999999999999", "r1x", "²"],
        "job_id": [*JOBS, "nested", "a%2Fb"],
        "signal": ["TERM", "SIGKILL", "9", "0", "65", "-1", "CONT"],
        "state": STATES,
    }.get(name, [])
    return st.one_of(st.sampled_from(known), text) if known else text


def query_value(name: str, schema: dict[str, Any]) -> st.SearchStrategy[str | None]:
    if name == "wait":
        # A real wait blocks as asked; keep it short, but try the odd values too.
        return st.sampled_from([None, "0", "0.05", "-5", "nan", "inf", "-inf", "1e400", "x"])
    choices: list[st.SearchStrategy[str | None]] = [st.none(), text, numbers]
    if name in ("since", "until"):
        choices.append(st.sampled_from(TIMES))
    if name == "state":
        choices.append(st.lists(st.sampled_from(STATES), min_size=1, max_size=3).map(",".join))
    if name == "format":
        choices.append(st.sampled_from(["raw", "text"]))
    if name == "args":
        choices.append(st.sampled_from(["name=x", "name=x,other=y", "bad", "=", ","]))
    if name in ("before", "job_id"):
        choices.append(st.sampled_from(["r1", "r2", "hello", "nested/noop"]))
    if schema.get("type") == "integer":
        choices.append(st.integers(-5, 2000).map(str))
    return st.one_of(choices)


def body_value(template: str) -> st.SearchStrategy[Any]:
    shaped: list[st.SearchStrategy[Any]] = [st.just({"message": "fuzz"})]
    if template == "/api/v1/runs":
        time = st.one_of(
            st.none(),
            st.sampled_from(TIMES),
            st.floats(),
            st.integers(min_value=-(2**70), max_value=2**70),
            json_values,
        )
        shaped = [
            st.fixed_dictionaries(
                {"job_id": st.one_of(st.sampled_from(list(JOBS)), text)},
                optional={"args": st.one_of(st.just({"name": "x"}), json_values), "time": time},
            ),
            st.fixed_dictionaries(
                {"program": st.one_of(PROGRAMS, json_values)}, optional={"time": time}
            ),
        ]
    return st.one_of(
        st.none(),
        json_values.map(json.dumps),
        st.binary(max_size=40),
        *(s.map(json.dumps) for s in shaped),
    )


@st.composite
def requests(draw: st.DrawFn, op: Operation, run_ids: list[str]) -> tuple[str, dict[str, Any]]:
    template, _, spec = op
    path = template
    query: dict[str, str] = {}
    for param in spec.get("parameters", []):
        name = param["name"]
        if param["in"] == "path":
            value = draw(path_value(name, run_ids))
            safe = "/" if name == "job_id" else ""
            # Dots escaped too, so the client does not resolve `.` and `..` segments.
            encoded = quote(value, safe=safe).replace(".", "%2E")
            path = path.replace("{" + name + "}", encoded)
        else:
            given = draw(query_value(name, param["schema"]))
            if given is not None:
                query[name] = given
    kwargs: dict[str, Any] = {"params": query}
    if "requestBody" in spec:
        body = draw(body_value(template))
        if body is not None:
            kwargs["content"] = body if isinstance(body, bytes) else body.encode()
            kwargs["headers"] = {"content-type": "application/json"}
    return path, kwargs


def fuzz_ids(op: Operation) -> str:
    return f"{op[1]} {op[0]}"


def all_operations() -> list[Operation]:
    from apsis_server.api.openapi import document

    return operations(document())


@pytest.mark.parametrize("op", all_operations(), ids=fuzz_ids)
def test_operation(server: Server, doc: dict[str, Any], op: Operation) -> None:
    run_ids = _run_ids(server)
    template, method, _ = op
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(requests(op, run_ids))
        def check(request: tuple[str, dict[str, Any]]) -> None:
            path, kwargs = request
            try:
                response = client.request(method, path, **kwargs)
            except httpx.TimeoutException:
                raise AssertionError(f"{method} {path} {kwargs}: no answer in {TIMEOUT}s") from None
            assert response.status_code < 500, f"{method} {path} {kwargs}: {response.text[:300]}"
            if response.status_code == 307 or (
                response.status_code in (404, 405)
                and response.headers.get("content-type", "").startswith("text/plain")
            ):
                return  # the path did not match the route (e.g. an encoded slash)
            check_answer(doc, template, method, response)

        check()


def test_server_still_answers(server: Server) -> None:
    assert server.get("/alive") == {"alive": True}
    assert not math.isnan(server.get("/stats")["uptime"])
