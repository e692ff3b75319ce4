"""Checking real answers against the server's OpenAPI document (apsis_server/api/openapi.py)."""

from __future__ import annotations

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


def check_answer(doc: dict[str, Any], template: str, method: str, response: httpx.Response) -> None:
    """The status is one the operation documents, and a JSON body matches its schema."""
    op = doc["paths"][template][method.lower()]
    status = str(response.status_code)
    assert status in op["responses"], (
        f"{method} {template}: undocumented status {status}: {response.text[:300]}"
    )
    content = op["responses"][status].get("content", {})
    media = response.headers.get("content-type", "").split(";")[0].strip()
    if content:
        assert media in content, f"{method} {template} {status}: content-type {media!r}"
    if media == "application/json":
        schema = content[media]["schema"]
        errors = sorted(
            Draft202012Validator(schema_of(doc, schema)).iter_errors(response.json()),
            key=lambda e: list(e.absolute_path),
        )
        assert not errors, f"{method} {template} {status}: " + "; ".join(
            f"{list(e.absolute_path)}: {e.message}" for e in errors[:5]
        )
