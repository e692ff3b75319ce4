"""`{{ expression }}` templates in job fields, expanded when a run is bound."""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Mapping
from typing import Any

import jinja2
import jinja2.meta
import jinja2.nodes
import jinja2.sandbox
import ora

from apsis_server.core.calendars import Calendar, builtin_calendar
from apsis_server.core.fields import FieldError


class TemplateError(ValueError):
    """A template that does not parse or does not expand."""


# How much of a template an error message shows.
_SHOWN = 80

# Nodes that load another template: there are none to load (the environment has no loader).
_OTHER_TEMPLATES = (
    jinja2.nodes.Include,
    jinja2.nodes.Extends,
    jinja2.nodes.Import,
    jinja2.nodes.FromImport,
)


def shquote(value: Any) -> str:
    """The `shquote` filter: the value's text as one shell word (`shlex.quote`).

    Shell commands are templates over text, so an arg is spliced into the command as
    it is; `{{ name | shquote }}` makes it one word whatever it holds.
    """
    return shlex.quote(str(value))


def _environment() -> jinja2.Environment:
    env = jinja2.sandbox.SandboxedEnvironment(
        undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True
    )
    env.filters["shquote"] = shquote
    return env


def _shown(text: str) -> str:
    return repr(text if len(text) <= _SHOWN else text[:_SHOWN] + "...")


def _bad(text: str, lineno: int, problem: str) -> TemplateError:
    where = f"line {lineno}: " if "\n" in text.strip() else ""
    return TemplateError(f"bad template {_shown(text)}: {where}{problem}")


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
        """The names a template uses; TemplateError if it would not compile.

        Besides what Jinja checks when it compiles, every filter and test must exist,
        even in an `{% if %}` branch (which Jinja leaves to run time), and no template
        may load another: these would fail only when a run is bound.
        """
        if "{" not in text:
            return frozenset()
        try:
            ast = self._env.parse(text)
            for node in ast.find_all((jinja2.nodes.Filter, jinja2.nodes.Test, *_OTHER_TEMPLATES)):
                problem = self._problem(node)
                if problem is not None:
                    raise _bad(text, node.lineno, problem)
            # It compiles the template, asserting what the parser does not.
            return frozenset(jinja2.meta.find_undeclared_variables(ast))
        except TemplateError:
            raise
        except jinja2.TemplateSyntaxError as exc:  # and TemplateAssertionError
            raise _bad(text, exc.lineno, exc.message or type(exc).__name__) from None
        except RecursionError:
            raise _bad(text, 1, "nested too deeply") from None
        except Exception as exc:
            # Whatever else Jinja raises: the file's error, never the loader's.
            raise _bad(text, 1, f"{type(exc).__name__}: {exc}") from None

    def _problem(self, node: jinja2.nodes.Node) -> str | None:
        if isinstance(node, _OTHER_TEMPLATES):
            return "templates cannot use other templates"
        if isinstance(node, jinja2.nodes.Filter) and node.name not in self._env.filters:
            return f"no filter named {node.name!r}"
        if isinstance(node, jinja2.nodes.Test) and node.name not in self._env.tests:
            return f"no test named {node.name!r}"
        return None

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
            raise TemplateError(f"template {_shown(text)} failed: {exc}") from None
        except Exception as exc:
            raise TemplateError(
                f"template {_shown(text)} failed: {type(exc).__name__}: {exc}"
            ) from None


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
