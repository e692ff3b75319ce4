"""The run page's output tabs (All, stdout, stderr) in headless Chromium against a
real server and agent: each shows its own stream, live while the run runs; the tab
is in the address; a program whose stderr goes into its stdout has one output and
says so; and what a program prints stays text."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Dialog, Page, expect

from tests.harness import Server, running_server

pytestmark = pytest.mark.browser

HOSTILE = "<img src=x onerror=alert(1)>"
LIVE = 'for i in $(seq 1 15); do echo "out $i"; echo "err $i" >&2; sleep 0.2; done'
JOBS = {
    "tabs/both": "program: 'echo out; echo err >&2'\n",
    "tabs/only out": "program: 'echo only out'\n",
    "tabs/live": f"program: {{type: shell, command: {LIVE!r}}}\n",
    "tabs/merged": "program: {type: shell, command: 'echo out; echo err >&2', stderr: merge}\n",
    "tabs/hostile": f"program: \"echo fine; echo '{HOSTILE}' >&2\"\n",
}

# Every refusal of the Content-Security-Policy, from before the page's first script.
WATCH_CSP = """
window.__csp = [];
document.addEventListener("securitypolicyviolation", (e) =>
  window.__csp.push(`${e.violatedDirective} ${e.blockedURI} ${e.sourceFile}:${e.lineNumber}`));
"""

TABS = ("merged", "stdout", "stderr")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("output-tabs"), JOBS) as server:
        yield server


@pytest.fixture
def tab(browser: Browser, server: Server) -> Iterator[Page]:
    """A page under the CSP, with no console error, no dialog (`alert`) and nothing
    refused by the policy."""
    context = browser.new_context(base_url=server.url, viewport={"width": 1360, "height": 860})
    context.add_init_script(WATCH_CSP)
    page = context.new_page()
    errors: list[str] = []
    dialogs: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))

    def on_dialog(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    page.set_default_timeout(10_000)
    yield page
    refused = page.evaluate("window.__csp")
    context.close()
    assert errors == [] and dialogs == [] and refused == [], (errors, dialogs, refused)


def finished(server: Server, job_id: str) -> str:
    run_id = server.schedule(job_id)
    server.wait_state(run_id, "success")
    return run_id


def tab_button(name: str) -> str:
    return f"#output-tab-{name}"


def expect_selected(tab: Page, name: str) -> None:
    for each in TABS:
        button = tab.locator(tab_button(each))
        expect(button).to_have_attribute("aria-selected", "true" if each == name else "false")
        expect(button).to_have_attribute("tabindex", "0" if each == name else "-1")


def lines(tab: Page) -> list[str]:
    return tab.locator("#output").inner_text().split()


def test_all_is_the_default_with_both_streams_and_each_size(tab: Page, server: Server) -> None:
    run_id = finished(server, "tabs/both")
    tab.goto(f"/runs/{run_id}")
    expect(tab.get_by_role("tablist")).to_be_visible()
    expect_selected(tab, "merged")
    expect(tab.locator("#output")).to_have_text("out\nerr\n")
    expect(tab.locator("#output-box")).to_have_attribute("role", "tabpanel")
    expect(tab.locator("#output-box")).to_have_attribute("aria-labelledby", "output-tab-merged")
    # Sizes in words, as the page gives every size: "out\n" and "err\n" are 4 bytes each.
    expect(tab.locator("#output-tab-merged")).to_have_text("All 8 B")
    expect(tab.locator("#output-tab-stdout")).to_have_text("stdout 4 B")
    expect(tab.locator("#output-tab-stderr")).to_have_text("stderr 4 B")
    expect(tab.get_by_role("tab", name="stderr 4 B", exact=True)).to_be_visible()  # its name
    expect(tab.locator("#output-merged")).to_be_hidden()
    assert re.search(r"/runs/r\d+$", tab.url), tab.url


def test_each_tab_shows_its_stream_and_the_address_keeps_it(tab: Page, server: Server) -> None:
    run_id = finished(server, "tabs/both")
    tab.goto(f"/runs/{run_id}")
    expect(tab.locator("#output")).to_have_text("out\nerr\n")
    tab.evaluate("window.__stay = 1")  # gone if the page reloads
    tab.click(tab_button("stderr"))
    expect_selected(tab, "stderr")
    expect(tab.locator("#output")).to_have_text("err\n")
    expect(tab).to_have_url(re.compile(rf"/runs/{run_id}\?output=stderr$"))
    tab.click(tab_button("stdout"))
    expect_selected(tab, "stdout")
    expect(tab.locator("#output")).to_have_text("out\n")
    expect(tab).to_have_url(re.compile(rf"/runs/{run_id}\?output=stdout$"))
    assert tab.evaluate("window.__stay") == 1  # no reload to switch

    tab.reload()
    expect_selected(tab, "stdout")
    expect(tab.locator("#output")).to_have_text("out\n")
    tab.click(tab_button("merged"))
    expect(tab.locator("#output")).to_have_text("out\nerr\n")
    expect(tab).to_have_url(re.compile(rf"/runs/{run_id}$"))

    # A link that names a tab opens it.
    tab.goto(f"/runs/{run_id}?output=stderr")
    expect_selected(tab, "stderr")
    expect(tab.locator("#output")).to_have_text("err\n")


def test_tabs_by_keyboard(tab: Page, server: Server) -> None:
    run_id = finished(server, "tabs/both")
    tab.goto(f"/runs/{run_id}")
    expect(tab.locator("#output")).to_have_text("out\nerr\n")
    tab.focus(tab_button("merged"))
    tab.keyboard.press("ArrowRight")
    expect_selected(tab, "stdout")
    expect(tab.locator(tab_button("stdout"))).to_be_focused()
    expect(tab.locator("#output")).to_have_text("out\n")
    tab.keyboard.press("End")
    expect_selected(tab, "stderr")
    expect(tab.locator("#output")).to_have_text("err\n")
    tab.keyboard.press("ArrowRight")  # round to the first
    expect_selected(tab, "merged")
    tab.keyboard.press("ArrowLeft")
    expect_selected(tab, "stderr")
    tab.keyboard.press("Home")
    expect_selected(tab, "merged")
    expect(tab.locator(tab_button("merged"))).to_be_focused()
    expect(tab.locator("#output")).to_have_text("out\nerr\n")


def test_an_empty_stream_says_so_in_its_tab(tab: Page, server: Server) -> None:
    run_id = finished(server, "tabs/only out")
    tab.goto(f"/runs/{run_id}?output=stderr")
    expect(tab.locator("#no-output")).to_have_text("No output.")
    expect(tab.locator("#output")).to_be_hidden()
    expect(tab.locator("#output-tab-stderr")).to_have_text("stderr 0 B")
    tab.click(tab_button("stdout"))
    expect(tab.locator("#output")).to_have_text("only out\n")
    expect(tab.locator("#no-output")).to_be_hidden()


def test_a_running_run_streams_new_stderr_lines_into_its_tab(tab: Page, server: Server) -> None:
    run_id = server.schedule("tabs/live")
    tab.goto(f"/runs/{run_id}")
    expect(tab.locator("#output")).to_contain_text("err 1")
    tab.click(tab_button("stderr"))
    expect(tab.locator("#output")).to_contain_text("err 1")
    seen = len(lines(tab)) // 2
    assert server.run(run_id)["state"] == "running"
    # Lines the program writes after the tab opened arrive without a reload.
    expect(tab.locator("#output")).to_contain_text(f"err {seen + 1}\n")
    assert server.run(run_id)["state"] == "running", "the line came after the run ended"
    expect(tab.locator("#output")).to_contain_text("err 15\n")
    text = lines(tab)
    assert text == [w for i in range(1, 16) for w in ("err", str(i))], text
    expect(tab.locator("#run-summary .state")).to_have_text("success")
    expect(tab.locator("#output-tab-stderr")).to_contain_text(re.compile(r"\d+ B$"))
    tab.click(tab_button("stdout"))
    expect(tab.locator("#output")).to_contain_text("out 15\n")
    assert "err" not in tab.locator("#output").inner_text()


def test_a_program_with_stderr_merged_shows_one_output_and_says_so(
    tab: Page, server: Server
) -> None:
    run_id = finished(server, "tabs/merged")
    assert server.get(f"/runs/{run_id}")["program"]["stderr"] == "merge"
    tab.goto(f"/runs/{run_id}?output=stderr")  # no such tab here: the one output
    expect(tab.locator("#output-merged")).to_have_text("stderr merged into stdout")
    expect(tab.locator("#output")).to_have_text("out\nerr\n")
    expect(tab.get_by_role("tablist")).to_be_hidden()
    expect(tab.get_by_role("tab")).to_have_count(0)
    expect(tab.locator("#output-box")).not_to_have_attribute("role", "tabpanel")
    expect(tab).to_have_url(re.compile(rf"/runs/{run_id}$"))


def test_markup_on_stderr_stays_text(tab: Page, server: Server) -> None:
    run_id = finished(server, "tabs/hostile")
    tab.goto(f"/runs/{run_id}?output=stderr")
    expect(tab.locator("#output")).to_have_text(f"{HOSTILE}\n")
    tab.click(tab_button("merged"))
    expect(tab.locator("#output")).to_have_text(f"fine\n{HOSTILE}\n")
    assert tab.locator("main img").count() == 0


def test_the_tabs_fit_a_phone(browser: Browser, server: Server) -> None:
    run_id = server.schedule("tabs/live")  # running: the bar also says "live"
    context = browser.new_context(base_url=server.url, viewport={"width": 390, "height": 844})
    page = context.new_page()
    try:
        page.goto(f"/runs/{run_id}?output=stderr")
        expect(page.locator("#feed-state")).to_have_text("live")
        expect(page.locator("#output-tab-stderr")).to_have_text(re.compile(r"^stderr \d+ B$"))
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, width
    finally:
        context.close()
        server.wait_state(run_id, "success")
