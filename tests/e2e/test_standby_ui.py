"""The web UI of servers sharing a database, in real headless Chromium: each page
says which server it talks to and whether it leads, and follows a takeover."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect

from tests.e2e.browser import page
from tests.harness import Server, wait_for

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]


def role(server: Server) -> str | None:
    try:
        return str(server.get("/servers")["role"])
    except (AssertionError, OSError):
        return None


def test_the_header_names_the_server_and_its_role(
    browser: Browser, tmp_path: Path, postgres_url: str
) -> None:
    config = "store: {{url: '{}'}}\nserver: {{id: {}}}\nagents: {{local: {{enabled: false}}}}\n"
    a = Server(tmp_path / "a", {}, config.format(postgres_url, "a"))
    b = Server(tmp_path / "b", {}, config.format(postgres_url, "b"))
    errors: list[str] = []
    on_a_errors: list[str] = []  # after a is killed, its page has errors of its own
    try:
        a.start()
        wait_for(lambda: role(a) == "leader", 20, "a to lead")
        b.start()
        wait_for(lambda: role(b) == "standby", 20, "b to stand by")
        with page(browser, a.url, on_a_errors) as on_a, page(browser, b.url, errors) as on_b:
            on_a.goto("/runs")
            on_b.goto("/runs")
            expect(on_a.locator("#server")).to_have_text("a · leader")
            expect(on_a.locator("#server")).to_have_attribute("data-role", "leader")
            badge = on_b.locator("#server")
            expect(badge).to_have_text("b · standby")
            expect(badge).to_have_attribute("title", re.compile(f"a leads, at {re.escape(a.url)}"))
            assert on_a_errors == [], on_a_errors
            a.kill()
            # The standby's page sees it take over, without a reload.
            expect(badge).to_have_text("b · leader", timeout=30_000)
            expect(badge).to_have_attribute("data-role", "leader")
    finally:
        a.cleanup()
        b.cleanup()
    assert errors == [], errors
