"""Checking answers against the server's OpenAPI document (apsis_server/api/openapi.py):
real answers of a real server, and those of the CLI's test double (tests/cli_fixture.py)."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
from jsonschema import Draft202012Validator

Operation = tuple[str, str, dict[str, Any]]


def operations(doc: dict[str, Any]) -> list[Operation]:
    """(path template, METHOD, operation) for every operation in the document."""
    return [
        (path, method.upper(), op)
        for path, item in sorted(doc["paths"].items())
        for method, op in sorted(item.items())
    ]


def path_params(template: str) -> list[str]:
    return re.findall(r"\{([^}]+)\}", template)


def schema_of(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` with the document's components beside it, so `#/components/...` resolves."""
    return {**schema, "components": doc["components"]}


def refs(value: Any) -> set[str]:
    """Every `$ref` anywhere in `value`."""
    if isinstance(value, dict):
        found = {value["$ref"]} if isinstance(value.get("$ref"), str) else set()
        return found.union(*(refs(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(refs(v) for v in value))
    return set()


def _pattern(template: str) -> re.Pattern[str]:
    # A job id may hold slashes (the server routes it as `{job_id:path}`).
    parts = re.split(r"(\{[^}]+\})", template)
    regex = "".join(
        (".+" if part == "{job_id}" else "[^/]+") if part.startswith("{") else re.escape(part)
        for part in parts
    )
    return re.compile(regex)


def operation_for(doc: dict[str, Any], method: str, path: str) -> str | None:
    """The path template of the document's operation that answers `method path`, if any.

    Where two templates match (`/jobs/{job_id}` and `/jobs/{job_id}/runs`), the one
    with more literal text wins, as the server's routes are ordered."""
    found = [
        template
        for template, item in doc["paths"].items()
        if method.lower() in item and _pattern(template).fullmatch(path)
    ]
    return max(found, key=lambda t: len(re.sub(r"\{[^}]+\}", "", t)), default=None)


def answer_problems(
    doc: dict[str, Any], template: str, method: str, status: int, media: str, body: bytes
) -> list[str]:
    """What is wrong with an answer: a status the operation does not document, a
    content type it does not list, a JSON body that does not match its schema."""
    op = doc["paths"][template][method.lower()]
    if str(status) not in op["responses"]:
        text = body[:300].decode("utf-8", "replace")
        return [f"{method} {template}: undocumented status {status}: {text}"]
    content = op["responses"][str(status)].get("content", {})
    if content and media not in content:
        return [f"{method} {template} {status}: content-type {media!r}"]
    if media != "application/json":
        return []
    if media not in content:
        return [f"{method} {template} {status}: a JSON body it does not document"]
    schema = content[media]["schema"]
    errors = sorted(
        Draft202012Validator(schema_of(doc, schema)).iter_errors(json.loads(body)),
        key=lambda e: list(e.absolute_path),
    )
    return [
        f"{method} {template} {status}: {list(e.absolute_path)}: {e.message}" for e in errors[:5]
    ]


def check_answer(doc: dict[str, Any], template: str, method: str, response: httpx.Response) -> None:
    """The status is one the operation documents, and a JSON body matches its schema."""
    media = response.headers.get("content-type", "").split(";")[0].strip()
    problems = answer_problems(doc, template, method, response.status_code, media, response.content)
    assert not problems, "; ".join(problems)
