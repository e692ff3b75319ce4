"""`{{ expression }}` templates in job fields, expanded when a run is bound."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import jinja2
import jinja2.meta
import jinja2.sandbox
import ora

from apsis_server.core.calendars import Calendar, builtin_calendar
from apsis_server.core.fields import FieldError


class TemplateError(ValueError):
    """A template that does not parse or does not expand."""


def _environment() -> jinja2.Environment:
    return jinja2.sandbox.SandboxedEnvironment(
        undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True
    )


def default_helpers(calendars: Mapping[str, Calendar] | None = None) -> dict[str, Any]:
    """The names every template sees besides the run's args, `run_id` and `job_id`.

    The ora time helpers; `get_calendar` knows the named calendars of the calendar
    directory as well as `all`, `none` and weekday lists like `Mon-Fri`.
    """
    named = dict(calendars or {})

    def get_calendar(name: str) -> Any:
        found = named.get(str(name)) or builtin_calendar(str(name))
        if found is None:
            raise LookupError(f"unknown calendar {name!r}")
        return found.ora_calendar

    return {
        "Date": ora.Date,
        "Daytime": ora.Daytime,
        "Time": ora.Time,
        "TimeZone": ora.TimeZone,
        "get_calendar": get_calendar,
        "from_local": ora.from_local,
        "to_local": ora.to_local,
    }


class Templates:
    """Expands and checks templates; one instance per job loader or engine.

    Without `helpers`, templates see `default_helpers()`; pass `{}` for none.
    """

    def __init__(self, helpers: Mapping[str, Any] | None = None) -> None:
        self._env = _environment()
        self._env.globals.update(default_helpers() if helpers is None else helpers)
        self._cache: dict[str, jinja2.Template] = {}

    @property
    def helper_names(self) -> frozenset[str]:
        return frozenset(self._env.globals)

    def names(self, text: str) -> frozenset[str]:
        """The names a template uses; TemplateError if it does not parse."""
        if "{" not in text:
            return frozenset()
        try:
            ast = self._env.parse(text)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(f"bad template {text!r}: {exc.message}") from None
        return frozenset(jinja2.meta.find_undeclared_variables(ast))

    def expand(self, text: str, scope: Mapping[str, Any]) -> str:
        """The text with every `{{ expression }}` replaced; TemplateError on failure."""
        if "{" not in text:
            return text
        template = self._cache.get(text)
        try:
            if template is None:
                template = self._cache[text] = self._env.from_string(text)
            return template.render(scope)
        except jinja2.TemplateError as exc:
            raise TemplateError(f"template {text!r} failed: {exc}") from None
        except Exception as exc:
            raise TemplateError(f"template {text!r} failed: {type(exc).__name__}: {exc}") from None


def check_template(
    templates: Templates, text: str, known: Iterable[str], path: str
) -> FieldError | None:
    """Why `text` would fail at bind time — it does not parse, or uses a name that is
    neither in `known` nor a helper — or None when it looks fine."""
    try:
        unknown = templates.names(text) - set(known) - templates.helper_names
    except TemplateError as exc:
        return FieldError(path, str(exc))
    if unknown:
        return FieldError(path, f"template uses unknown name(s): {', '.join(sorted(unknown))}")
    return None
