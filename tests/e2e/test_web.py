"""The web UI in real headless Chromium against a real server and agent."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.e2e.browser import page
from tests.harness import Server, group_alive, running_server, wait_for

pytestmark = pytest.mark.browser

COLOURS = (
    "printf '\\033[31mred alert\\033[0m\\n'; sleep 1.5; printf '\\033[1;32mall green\\033[0m\\n'"
)
JOBS = {
    "ui/short": "metadata: {labels: [quick]}\nprogram: 'sleep 1; echo short done'\n",
    "ui/colours": f"program: {{type: shell, command: {COLOURS!r}}}\n",
    "ui/long": "program: {type: program, argv: [/bin/sleep, '600']}\n",
    "reports/nightly": (
        "metadata:\n  labels: [nightly, reports]\n  description: Builds the **nightly** report.\n"
        "params: [date]\nprogram: 'echo report {{ date }}'\n"
    ),
    "reports/weekly": "metadata: {labels: [reports]}\nprogram: echo weekly\n",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("web"), JOBS) as server:
        yield server


@pytest.fixture
def tab(browser: Browser, server: Server) -> Iterator[Page]:
    errors: list[str] = []
    with page(browser, server.url, errors) as tab:
        yield tab
    assert errors == [], errors


def row(tab: Page, run_id: str) -> str:
    return f'#runs tr[data-run-id="{run_id}"]'


def test_runs_list_updates_live(tab: Page, server: Server) -> None:
    tab.goto("/runs")
    expect(tab.locator("#conn")).to_have_attribute("data-status", "connected")
    expect(tab.locator("#version")).to_have_text(re.compile(r"^v\d"))
    expect(tab.locator("#server")).to_be_hidden()  # one server (SQLite): nothing to tell
    run_id = server.schedule("ui/short")
    expect(tab.locator(row(tab, run_id))).to_have_attribute("data-state", "running")
    tab.evaluate("window.__stay = 1")  # gone if the page reloads
    expect(tab.locator(row(tab, run_id))).to_have_attribute("data-state", "success", timeout=10_000)
    expect(tab.locator(f"{row(tab, run_id)} .state")).to_have_text("success")
    assert tab.evaluate("window.__stay") == 1
    assert tab.locator("#runs tr.now-line").count() == 1


def test_run_page_streams_output_with_ansi_colours(tab: Page, server: Server) -> None:
    run_id = server.schedule("ui/colours")
    tab.goto(f"/runs/{run_id}")
    red = tab.locator("#output span.ansi-fg-1", has_text="red alert")
    expect(red).to_be_visible()
    expect(tab.locator("#output")).not_to_contain_text("all green")
    green = tab.locator("#output span.ansi-fg-2.ansi-bold", has_text="all green")
    expect(green).to_be_visible(timeout=10_000)  # arrived live, without a reload
    assert "\x1b" not in tab.locator("#output").inner_text()
    assert "[31m" not in tab.locator("#output").inner_text()
    expect(tab.locator("#run-summary .state")).to_have_text("success")
    expect(tab.locator("#run-log")).to_contain_text("exited 0")


def test_stop_from_the_run_page_with_confirmation(tab: Page, server: Server) -> None:
    run_id = server.schedule("ui/long")
    server.wait_state(run_id, "running")
    pgid: int = wait_for(lambda: server.meta(run_id).get("pgid"), 5, "pgid in meta")
    tab.goto(f"/runs/{run_id}")
    tab.evaluate("window.__stay = 1")
    stop = tab.locator('button[data-op="stop"]')
    stop.click()
    dialog = tab.locator("dialog#confirm")
    expect(dialog).to_be_visible()
    dialog.locator('button[value="cancel"]').click()
    expect(dialog).to_be_hidden()
    assert server.run(run_id)["state"] == "running" and group_alive(pgid)
    stop.click()
    expect(dialog).to_contain_text(run_id)
    dialog.locator('button[value="confirm"]').click()
    expect(tab.locator("#run-summary .state")).to_have_text("success", timeout=10_000)
    expect(tab.locator("#run-log")).to_contain_text("stop requested")
    wait_for(lambda: not group_alive(pgid), 5, "the process group to be gone")
    assert server.run(run_id)["state"] == "success"
    assert tab.evaluate("window.__stay") == 1  # no page reload
    expect(tab.locator('button[data-op="rerun"]')).to_be_visible()


def test_set_error_from_the_run_page_kills_the_program(tab: Page, server: Server) -> None:
    run_id = server.schedule("ui/long")
    server.wait_state(run_id, "running")
    pgid: int = wait_for(lambda: server.meta(run_id).get("pgid"), 5, "pgid in meta")
    tab.goto(f"/runs/{run_id}")
    tab.locator('button[data-op="error"]').click()
    tab.locator('dialog#confirm button[value="confirm"]').click()
    expect(tab.locator("#run-summary .state")).to_have_text("error", timeout=10_000)
    expect(tab.locator("#run-log")).to_contain_text("killing its process")
    wait_for(lambda: not group_alive(pgid), 5, "the process group to be gone")
    expect(tab.locator('button[data-op="error"]')).to_have_count(0)  # finished now


def test_filters_survive_a_reload(tab: Page, server: Server) -> None:
    for _ in range(2):
        server.wait_finished(server.schedule("reports/weekly"))
    other = server.schedule("reports/nightly", {"date": "2026-01-02"})
    server.wait_finished(other)
    tab.goto("/runs")
    tab.fill("#f-job", "reports/weekly")
    tab.select_option("#f-state", "success")
    expect(tab).to_have_url(re.compile(r"job=reports%2Fweekly.*state=success"))
    expect(tab.locator("#runs tr[data-run-id]")).to_have_count(2)
    tab.reload()
    expect(tab.locator("#f-job")).to_have_value("reports/weekly")
    expect(tab.locator("#f-state")).to_have_value("success")
    expect(tab.locator("#runs tr[data-run-id]")).to_have_count(2)
    assert tab.locator(row(tab, other)).count() == 0
    for cell in tab.locator("#runs td.job").all_inner_texts():
        assert cell == "reports/weekly"


def test_jobs_search_finds_a_job_by_label(tab: Page, server: Server) -> None:
    tab.goto("/jobs")
    expect(tab.locator("#jobs-tree li.job")).to_have_count(len(JOBS))
    tab.fill("#job-search", "label:nightly")
    jobs = tab.locator("#jobs-tree li.job")
    expect(jobs).to_have_count(1)
    expect(jobs).to_have_attribute("data-job-id", "reports/nightly")
    tab.reload()  # the search is in the URL too
    expect(tab.locator("#jobs-tree li.job")).to_have_count(1)
    jobs.locator("a").first.click()
    expect(tab.locator("#description strong")).to_have_text("nightly")
    tab.fill('#run-now input[data-param="date"]', "2026-02-03")
    tab.click('#run-now button[type="submit"]')
    tab.locator('dialog#confirm button[value="confirm"]').click()  # it asks first
    expect(tab).to_have_url(re.compile(r"/runs/r\d+$"))
    expect(tab.locator("#run-summary")).to_contain_text("date=2026-02-03")
    expect(tab.locator("#output")).to_contain_text("report 2026-02-03", timeout=10_000)


def test_agents_page(tab: Page, server: Server) -> None:
    tab.goto("/agents")
    agent = tab.locator('#agents tr[data-agent-id="local"]')
    expect(agent).to_contain_text("connected")


def test_reconnects_after_the_server_restarts(browser: Browser, tmp_path: Path) -> None:
    # The browser logs the failed reconnection attempts, and a request in flight when
    # the server is killed is reset: expected. Anything else is not.
    errors: list[str] = []
    with running_server(tmp_path, JOBS) as server, page(browser, server.url, errors) as tab:
        tab.goto("/runs")
        conn = tab.locator("#conn")
        expect(conn).to_have_attribute("data-status", "connected")
        server.kill()
        expect(conn).to_have_attribute("data-status", "disconnected")
        server.start()
        expect(conn).to_have_attribute("data-status", "connected", timeout=15_000)
        run_id = server.schedule("reports/weekly")
        expect(tab.locator(row(tab, run_id))).to_have_attribute("data-state", "success")
    expected = ("WebSocket", "ERR_CONNECTION_REFUSED", "ERR_CONNECTION_RESET")
    assert all(any(word in e for word in expected) for e in errors), errors


def test_ui_asks_for_the_api_token(browser: Browser, tmp_path: Path) -> None:
    token_file = tmp_path / "ops.token"
    token_file.write_text("s3cret-token-for-the-ui\n")
    config = f"api: {{tokens: {{ops: {{token_file: {token_file}, access: rw}}}}}}\n"
    with running_server(tmp_path / "srv", {"t/hello": "program: echo hi\n"}, config) as server:
        assert server.api("GET", "/jobs").status_code == 401
        errors: list[str] = []
        with page(browser, server.url, errors) as tab:
            asked: list[str] = []

            def answer(dialog: Any) -> None:
                asked.append(dialog.message)
                dialog.accept("s3cret-token-for-the-ui")

            tab.on("dialog", answer)
            tab.goto("/jobs")
            expect(tab.get_by_text("hello").first).to_be_visible()
            expect(tab.locator("#conn")).to_have_attribute("data-status", "connected")
            assert asked and "token" in asked[0]
        # The feeds took the token in a subprotocol: no URL, so no log line, holds it.
        assert "WebSocket /api/v1/summary" in server.log()
        assert "s3cret-token-for-the-ui" not in server.log()
