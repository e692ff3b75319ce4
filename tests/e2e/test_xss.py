"""Hostile job descriptions in real headless Chromium, the UI under its CSP, and the
security headers on every kind of answer of a real server."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import re
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Browser, Dialog, Page, Route, expect
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route as StarletteRoute

from apsis_server.web.headers import SecurityHeaders
from tests.e2e.browser import page
from tests.harness import Server, running_server
from tests.unit.test_markdown import XSS

browser = pytest.mark.browser

CORPUS = "\n\n".join(source for _, source in XSS)
SAFE = "Ordinary: **bold**, `code`, [the site](https://example.com/docs).\n\n- one\n- two"
DESCRIPTION = f"{SAFE}\n\n{CORPUS}"
COLOURS = r"printf '\033[38;5;208morange\033[0m \033[48;2;1;2;3mtrue\033[0m\n'"
JOBS = {
    # JSON is YAML: the control characters go in as escapes.
    "xss/corpus": json.dumps({"metadata": {"description": DESCRIPTION}, "program": "true"}),
    "ui/colours": json.dumps({"program": {"type": "shell", "command": COLOURS}}),
}
EXPECTED_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'"
    ),
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
}
# Gathers CSP violations from before the first script of the page runs.
WATCH_CSP = """
window.__csp = [];
document.addEventListener("securitypolicyviolation", (e) =>
  window.__csp.push(`${e.violatedDirective} ${e.blockedURI} ${e.sourceFile}:${e.lineNumber}`));
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("xss"), JOBS) as server:
        yield server


class Watched:
    """A page with everything that would show script running or the CSP refusing:
    dialogs, CSP violation events, and (gathered by `page`) console errors."""

    def __init__(self, tab: Page, errors: list[str]) -> None:
        self.tab = tab
        self.errors = errors
        self.dialogs: list[str] = []
        tab.add_init_script(WATCH_CSP)
        tab.on("dialog", self._dialog)

    def _dialog(self, dialog: Dialog) -> None:
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    def violations(self) -> list[str]:
        found: list[str] = self.tab.evaluate("window.__csp || []")
        return found


@pytest.fixture
def watched(browser: Browser, server: Server) -> Iterator[Watched]:
    errors: list[str] = []
    with page(browser, server.url, errors) as tab:
        seen = Watched(tab, errors)
        yield seen
        assert seen.dialogs == []
        assert seen.violations() == []
    assert errors == [], errors  # the browser logs each CSP violation as an error too


def open_corpus(tab: Page) -> None:
    tab.goto("/jobs/xss/corpus")
    expect(tab.locator("#description")).to_be_visible()
    expect(tab.locator("#conn")).to_have_attribute("data-status", "connected")


@browser
def test_hostile_description_runs_nothing(watched: Watched) -> None:
    tab = watched.tab
    open_corpus(tab)
    description = tab.locator("#description")
    expect(description.locator("strong").first).to_have_text("bold")
    expect(description.locator("code").first).to_have_text("code")
    site = description.get_by_role("link", name="the site")
    expect(site).to_have_attribute("href", "https://example.com/docs")
    expect(site).to_have_attribute("rel", "noopener noreferrer")
    expect(description).to_contain_text("<script>window.__xss=1</script>")  # shown as text
    expect(description).to_contain_text("[x](javascript:window.__xss=1)")
    tab.wait_for_timeout(500)  # time for an onerror, onload or autofocus to fire
    assert tab.evaluate("window.__xss") is None
    assert tab.title() == "xss/corpus · Apsis"
    handlers = tab.evaluate(
        """[...document.querySelectorAll("#description *")]
             .flatMap((el) => [...el.attributes].map((a) => a.name))
             .filter((name) => name.startsWith("on"))"""
    )
    assert handlers == []
    tags = set(
        tab.evaluate("""[...document.querySelectorAll("#description *")].map(
        (el) => el.localName)""")
    )
    assert not tags & {"script", "style", "iframe", "img", "svg", "object", "embed", "form"}
    protocols = tab.evaluate(
        """[...document.querySelectorAll("#description [href], #description [src]")]
             .map((el) => new URL(el.getAttribute("href") ?? el.getAttribute("src"),
                                  document.baseURI).protocol)"""
    )
    assert len(protocols) >= 2
    assert set(protocols) <= {"http:", "https:", "mailto:"}, protocols


@browser
def test_clicking_every_description_link_runs_nothing(browser: Browser, server: Server) -> None:
    errors: list[str] = []  # links to other pages of ours answer 404 in the API: not asserted
    with page(browser, server.url, errors) as tab:
        watched = Watched(tab, errors)

        def elsewhere(route: Route) -> None:
            route.fulfill(status=200, content_type="text/plain", body="elsewhere")

        tab.route(lambda url: not url.startswith(server.url), elsewhere)
        open_corpus(tab)
        count = tab.locator("#description a").count()
        assert count >= 5
        for i in range(count):
            open_corpus(tab)
            link = tab.locator("#description a").nth(i)
            href = link.get_attribute("href")
            link.click()
            tab.wait_for_load_state()
            if tab.url.endswith("/jobs/xss/corpus"):  # no navigation: the page is still ours
                assert tab.evaluate("window.__xss") is None, href
                assert tab.title() == "xss/corpus · Apsis", href
                assert watched.violations() == [], href
            assert watched.dialogs == [], href
        assert not [e for e in errors if "Content Security Policy" in e], errors


@browser
@pytest.mark.parametrize(
    ("path", "ready"),
    [
        ("/", "#runs"),
        ("/runs", "#runs"),
        ("/jobs", "#jobs-tree li.job"),
        ("/jobs/xss/corpus", "#description"),
        ("/agents", '#agents tr[data-agent-id="local"]'),
    ],
)
def test_pages_load_under_the_csp(watched: Watched, path: str, ready: str) -> None:
    tab = watched.tab
    response = tab.goto(path)
    assert response is not None
    assert (
        response.headers["content-security-policy"] == EXPECTED_HEADERS["content-security-policy"]
    )
    expect(tab.locator(ready).first).to_be_visible()
    expect(tab.locator("#conn")).to_have_attribute("data-status", "connected")
    expect(tab.locator("#version")).to_have_text(re.compile(r"^v\d"))


@browser
def test_run_page_and_its_colours_under_the_csp(watched: Watched, server: Server) -> None:
    run_id = server.schedule("ui/colours")
    server.wait_finished(run_id)
    tab = watched.tab
    tab.goto(f"/runs/{run_id}")
    # 256 and true colours are set through the CSSOM, which the CSP allows.
    expect(tab.locator("#output span", has_text="orange")).to_have_css("color", "rgb(255, 135, 0)")
    expect(tab.locator("#output span", has_text="true")).to_have_css(
        "background-color", "rgb(1, 2, 3)"
    )
    expect(tab.locator("#run-summary .state")).to_have_text("success")
    expect(tab.locator("#run-log")).to_contain_text("exited 0")
    assert tab.locator("#output [style]").count() == 2  # the CSSOM writes the attribute


@browser
def test_the_policy_is_in_force(watched: Watched) -> None:
    # Not only sent: an inline script and a style attribute, injected as an XSS
    # would, are refused, reported, and logged. The checks above would see them.
    tab = watched.tab
    open_corpus(tab)
    tab.evaluate(
        """() => {
          const inline = document.createElement("script");
          inline.textContent = "window.__xss = 1";
          document.body.append(inline);
          const styled = document.createElement("div");
          styled.setAttribute("style", "color: red");
          document.body.append(styled);
        }"""
    )
    expect(tab.locator("body")).to_be_visible()
    tab.wait_for_function("window.__csp.length >= 2")
    assert tab.evaluate("window.__xss") is None
    found = watched.violations()
    assert any(v.startswith("script-src-elem") for v in found), found
    assert any(v.startswith("style-src-attr") for v in found), found
    assert len(watched.errors) == 2 and all("Content Security Policy" in e for e in watched.errors)
    tab.evaluate("window.__csp.length = 0")  # seen: the fixture checks for others
    watched.errors.clear()


def assert_security_headers(response: httpx.Response) -> None:
    for name, value in EXPECTED_HEADERS.items():
        assert response.headers.get_list(name) == [value], (response.url, name)


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/", 200),
        ("/runs", 200),
        ("/jobs/xss/corpus", 200),
        ("/static/js/app.js", 200),
        ("/static/style.css", 200),
        ("/static/favicon.svg", 200),
        ("/static/missing.js", 404),
        ("/favicon.ico", 200),
        ("/api/v1/alive", 200),
        ("/api/v1/jobs", 200),
        ("/api/v1/jobs/xss/corpus", 200),
        ("/api/v1/jobs/no/such", 404),
        ("/api/v1/openapi.json", 200),
        ("/metrics", 200),
    ],
)
def test_every_answer_carries_the_security_headers(server: Server, path: str, status: int) -> None:
    response = httpx.get(server.url + path, timeout=10)
    assert response.status_code == status
    assert_security_headers(response)


def test_a_post_answer_carries_the_security_headers(server: Server) -> None:
    response = server.api("POST", "/runs", json={"job_id": "xss/corpus", "args": {}})
    assert response.status_code == 201, response.text
    assert_security_headers(response)


def test_the_api_hands_out_the_sanitized_description(server: Server) -> None:
    job = server.get("/jobs/xss/corpus")["job"]
    assert job["metadata"]["description"] == DESCRIPTION
    assert (
        '<a href="https://example.com/docs" rel="noopener noreferrer">' in job["description_html"]
    )
    assert "<script" not in job["description_html"]
    assert server.get("/jobs/ui/colours")["job"]["description_html"] == ""


def test_headers_a_handler_set_are_kept_not_doubled() -> None:
    async def framed(request: Request) -> PlainTextResponse:
        return PlainTextResponse("x", headers={"x-frame-options": "SAMEORIGIN"})

    async def get() -> httpx.Response:
        app = SecurityHeaders(Starlette(routes=[StarletteRoute("/", framed)]))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get("/")

    # In a thread of its own: Playwright's sync API keeps an event loop in this one.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        response = pool.submit(asyncio.run, get()).result(timeout=10)
    assert response.headers.get_list("x-frame-options") == ["SAMEORIGIN"]
    assert response.headers.get_list("x-content-type-options") == ["nosniff"]
