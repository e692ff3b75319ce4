"""The operator's daily loop in the web UI (issue 22), in headless Chromium against a
real server and agent: what ran, what failed, what is next, at a glance; values in
words, times with their zone, and nothing an operator types or a program prints
ever turned into markup."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.harness import Server, running_server, wait_for

pytestmark = pytest.mark.browser

HOSTILE = "<img src=x onerror=window.__pwned=1>"
WEEKDAY = """\
params: [date]
program:
  type: shell
  command: echo report for {{ date | shquote }}
  timeout: {duration: 10 min}
schedule:
  - {type: daily, daytime: "09:30", tz: America/New_York, calendar: Mon-Fri}
  - {type: daily, daytime: "12:00", tz: Europe/London, calendar: Sat, enabled: false}
conditions:
  - {type: max_running, count: 1}
"""
JOBS = {
    "ops/every weekday": WEEKDAY,
    "ops/window": (
        "program: 'true'\nschedule:\n"
        "  start: {type: interval, interval: 3600}\n"
        "  stop: {type: duration, duration: 10 min}\n"
    ),
    "ops/sleep then fail": "program: 'sleep 0.1; echo failing >&2; exit 3'\n",
    "ops/quiet": "program: 'true'\n",
    "ops/long": "program: {type: program, argv: [/bin/sleep, '600']}\n",
    "ops/blocked": "condition: {type: dependency, job_id: ops/never}\nprogram: 'true'\n",
    "ops/never": "program: 'true'\n",  # never run: what ops/blocked waits for
    f"ops/fails {HOSTILE}": "program: 'echo no >&2; exit 1'\n",
    "bulk/noop": "program: {type: no-op}\n",
    "reports/daily": (
        "params: [region, day]\nprogram: 'echo {{ region | shquote }} {{ day | shquote }}'\n"
    ),
    f"esc/{HOSTILE}": (
        f"params: [x]\nprogram: {{type: program, argv: [/bin/echo, '{HOSTILE}', '{{{{ x }}}}']}}\n"
        "metadata: {labels: [esc]}\n"
    ),
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("operator-ui"), JOBS) as server:
        yield server


# Every refusal of the Content-Security-Policy, from before the page's first script.
WATCH_CSP = """
window.__csp = [];
document.addEventListener("securitypolicyviolation", (e) =>
  window.__csp.push(`${e.violatedDirective} ${e.blockedURI} ${e.sourceFile}:${e.lineNumber}`));
"""


@pytest.fixture
def tab(browser: Browser, server: Server) -> Iterator[Page]:
    """A page in Paris: local time is not UTC, so every zone shown is tested; under the
    CSP, with no console error and nothing run from text that should stay text."""
    context = browser.new_context(
        base_url=server.url, viewport={"width": 1360, "height": 860}, timezone_id="Europe/Paris"
    )
    context.add_init_script(WATCH_CSP)
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.set_default_timeout(10_000)
    yield page
    pwned = page.evaluate("window.__pwned")
    refused = page.evaluate("window.__csp")
    context.close()
    assert errors == [] and pwned is None and refused == [], (errors, pwned, refused)


def confirm(tab: Page, expected: str | None = None) -> None:
    dialog = tab.locator("dialog#confirm")
    expect(dialog).to_be_visible()
    if expected is not None:
        expect(dialog).to_contain_text(expected)
    dialog.locator('button[value="confirm"]').click()
    expect(dialog).to_be_hidden()


def cancel(tab: Page) -> None:
    dialog = tab.locator("dialog#confirm")
    expect(dialog).to_be_visible()
    dialog.locator('button[value="cancel"]').click()
    expect(dialog).to_be_hidden()


def row(run_id: str) -> str:
    return f'tr[data-run-id="{run_id}"]'


def run_count(server: Server) -> int:
    runs = server.get("/runs", params={"limit": "1"})["runs"]
    return int(runs[0]["run_id"][1:]) if runs else 0


def iso(delta: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=delta)).isoformat()


# -- defects ----------------------------------------------------------------------------


def test_part_of_a_job_id_finds_runs_beyond_the_first_page(tab: Page, server: Server) -> None:
    old = server.schedule("ops/sleep then fail")
    server.wait_finished(old)
    for _ in range(250):  # newer than the first page and the feed's recent runs
        server.post("/runs", {"job_id": "bulk/noop"})
    tab.goto("/runs?job=SLEEP")
    expect(tab.locator(f"#runs {row(old)}")).to_be_visible()
    jobs = set(tab.locator("#runs td.job").all_inner_texts())
    assert jobs == {"ops/sleep then fail"}, jobs


def test_an_ad_hoc_run_from_the_ui_shows_its_command(tab: Page, server: Server) -> None:
    command = f"echo '{HOSTILE}' && echo done"
    tab.goto("/runs")
    tab.click("#adhoc-open")
    tab.click('#adhoc button[type="submit"]')
    expect(tab.locator("#adhoc-error")).to_have_text("Give a shell command to run.")
    tab.fill("#adhoc-command", command)
    before = run_count(server)
    tab.click('#adhoc button[type="submit"]')
    expect(tab.locator("dialog#confirm .dialog-body")).to_contain_text(command)
    cancel(tab)
    assert run_count(server) == before  # nothing ran
    tab.click('#adhoc button[type="submit"]')
    confirm(tab, "on the server's own agent, now")
    expect(tab).to_have_url(re.compile(r"/runs/r\d+$"))
    expect(tab.locator("#run-command")).to_have_text(command)
    expect(tab.locator("#output")).to_contain_text(f"{HOSTILE}\ndone")
    expect(tab.locator("#run-origin")).to_have_text("an ad-hoc command")
    expect(tab.locator('#run-summary a[href="/jobs/adhoc"]')).to_have_count(0)
    assert tab.locator("main img").count() == 0


def test_an_ad_hoc_argv_with_a_host_and_a_time(tab: Page, server: Server) -> None:
    tab.goto("/runs")
    tab.click("#adhoc-open")
    tab.select_option("#adhoc-kind", "argv")
    tab.fill("#adhoc-command", "/bin/echo\ntwo words\n")
    tab.fill("#adhoc-host", "localhost")
    tab.fill("#adhoc-time", "2099-01-02T03:04")
    tab.click('#adhoc button[type="submit"]')
    confirm(tab, "on localhost, at 2099-01-02 03:04:00 CET")
    expect(tab).to_have_url(re.compile(r"/runs/r\d+$"))
    run_id = tab.url.rsplit("/", 1)[1]
    answer = server.get(f"/runs/{run_id}")
    assert answer["program"]["argv"] == ["/bin/echo", "two words"]
    assert answer["program"]["host"] == "localhost"
    assert answer["run"]["schedule_time"].startswith("2099-01-02T02:04:00")
    expect(tab.locator("#run-command")).to_have_text("/bin/echo 'two words'")
    expect(tab.locator("#no-output")).to_have_text("Not started yet.")
    server.post(f"/runs/{run_id}/skip")


def test_a_stop_time_on_the_run_page_and_in_the_list(tab: Page, server: Server) -> None:
    planned = server.get("/runs", params={"job_id": "ops/window"})["runs"][0]
    assert planned["stop_time"]
    tab.goto(f"/runs/{planned['run_id']}")
    expect(tab.locator("#stop-time time")).to_contain_text(re.compile(r"\d\d:\d\d:\d\d"))
    tab.goto("/runs?job=/ops/window&upcoming=1")
    expect(tab.locator(f"{row(planned['run_id'])} .stop-time")).to_contain_text("stop")


def test_a_job_in_words(tab: Page, server: Server) -> None:
    tab.goto("/jobs/ops/every weekday")
    schedules = tab.locator("#schedules")
    expect(schedules.locator(".chip", has_text="daily")).to_have_count(2)
    expect(schedules).not_to_contain_text(re.compile(r"[a-z]Schedule"))  # no class names
    assert schedules.inner_text().count("disabled") == 1
    words = tab.locator("#program-words")
    expect(words).to_contain_text("after 10m, with SIGTERM")
    expect(words).to_contain_text("SIGTERM, then SIGKILL after 1m")
    expect(tab.locator("#conditions")).to_contain_text("at most 1 running at once")
    for panel in ("#program-words", "#schedules", "#conditions"):
        assert "{" not in tab.locator(panel).inner_text()


def test_by_hand_is_not_ad_hoc(tab: Page, server: Server) -> None:
    run_id = server.schedule("ops/quiet")
    server.wait_finished(run_id)
    tab.goto(f"/runs/{run_id}")
    expect(tab.locator("#run-origin")).to_have_text("scheduled by hand")
    expect(tab.locator("main")).not_to_contain_text("ad hoc")


def test_a_finished_run_in_words(tab: Page, server: Server) -> None:
    run_id = server.schedule("ops/sleep then fail")
    server.wait_finished(run_id)
    tab.goto(f"/runs/{run_id}")
    meta = tab.locator("#meta")
    expect(meta).to_contain_text(re.compile(r"maxrss [\d.]+ [KMG]iB"))
    expect(meta).to_contain_text("core_dump")
    text = meta.inner_text()
    assert not re.search(r"\d\.\d{5,}", text), text
    assert "false" not in text and "null" not in text
    expect(tab.locator("#run-times")).to_contain_text("created")
    expect(tab.locator("#run-times dt", has_text=re.compile("^scheduled$"))).to_have_count(0)


def test_times_show_their_zone_and_follow_the_selector(tab: Page, server: Server) -> None:
    tab.goto("/jobs/ops/every weekday")
    first = tab.locator("#next-times time").first
    expect(first).to_contain_text(re.compile(r"^(\d{4}-\d\d-\d\d )?\d\d:30:00 CES?T$"))
    title = first.get_attribute("title") or ""
    assert "local: " in title and "UTC:   " in title and "(America/New_York)" in title
    assert not re.search(r"\.\d+", title)  # no fractions of seconds
    tab.select_option("#zone", "job")
    expect(first).to_contain_text(re.compile(r"09:30:00 E[SD]T$"))
    tab.select_option("#zone", "utc")
    expect(first).to_contain_text(re.compile(r"\d\d:30:00 UTC$"))
    tab.reload()  # the choice is kept
    expect(tab.locator("#zone")).to_have_value("utc")
    expect(tab.locator("#next-times time").first).to_contain_text("UTC")
    tab.select_option("#zone", "local")


def test_no_empty_boxes(tab: Page, server: Server) -> None:
    quiet = server.schedule("ops/quiet")
    server.wait_finished(quiet)
    tab.goto(f"/runs/{quiet}")
    expect(tab.locator("#no-output")).to_have_text("No output.")
    expect(tab.locator("#output")).to_be_hidden()
    skipped = server.post("/runs", {"job_id": "ops/quiet", "time": iso(3600)})["run"]["run_id"]
    server.post(f"/runs/{skipped}/skip")
    tab.goto(f"/runs/{skipped}")
    expect(tab.locator("#run-meta")).to_contain_text("None: it never ran.")
    expect(tab.locator("#no-output")).to_have_text("No output: it never ran.")


def test_the_list_opens_on_what_happened_and_counts_its_rows(tab: Page, server: Server) -> None:
    later = server.post("/runs", {"job_id": "ops/quiet", "time": iso(7200)})["run"]["run_id"]
    done = server.schedule("ops/quiet")
    server.wait_finished(done)
    tab.goto("/runs?job=ops/quiet")
    first = tab.locator("#runs tr[data-run-id]").first
    expect(first).to_have_attribute("data-run-id", done)
    expect(tab.locator(f"#runs {row(later)}")).to_have_count(0)
    count = tab.locator("#runs-count")
    expect(count).to_contain_text("upcoming")
    shown = int((count.inner_text()).split()[0])
    assert shown == tab.locator("#runs tr[data-run-id]").count()
    tab.click("#show-upcoming")
    expect(tab.locator(f"#runs {row(later)}")).to_be_visible()
    expect(tab).to_have_url(re.compile(r"upcoming=1"))
    # Upcoming runs are above the line at "now", what happened below it.
    rows = tab.locator("#runs tbody tr").evaluate_all(
        "rows => rows.map(r => r.dataset.runId || r.className)"
    )
    assert rows.index(later) < rows.index("now-line") < rows.index(done), rows
    server.post(f"/runs/{later}/skip")


def test_run_now_asks_first(tab: Page, server: Server) -> None:
    tab.goto("/jobs/reports/daily")
    tab.fill('#run-now input[data-param="region"]', HOSTILE)
    tab.fill('#run-now input[data-param="day"]', "mon")
    before = run_count(server)
    tab.click('#run-now button[type="submit"]')
    expect(tab.locator("dialog#confirm")).to_contain_text(f"region={HOSTILE} day=mon")
    cancel(tab)
    assert run_count(server) == before
    tab.click('#run-now button[type="submit"]')
    confirm(tab)
    expect(tab).to_have_url(re.compile(r"/runs/r\d+$"))
    expect(tab.locator("#output")).to_contain_text(f"{HOSTILE} mon")


def test_an_unknown_page_says_so(browser: Browser, server: Server) -> None:
    context = browser.new_context(base_url=server.url)  # its 404 is logged: no `tab`
    try:
        page = context.new_page()
        response = page.goto("/nosuch")
        assert response is not None and response.status == 404
        expect(page.locator("#no-page")).to_contain_text("No such page")
        expect(page.locator("#no-page")).to_contain_text("/nosuch")
        page.click("#no-page a:has-text('Runs')")
        expect(page.locator("#runs")).to_be_visible()
    finally:
        context.close()


# -- wishes -------------------------------------------------------------------------------


def test_reload_jobs_from_the_ui(tab: Page, server: Server) -> None:
    (server.jobs_dir / "fresh").mkdir(exist_ok=True)
    (server.jobs_dir / "fresh" / "new one.yaml").write_text("program: echo new\n")
    (server.jobs_dir / "fresh" / "broken.yaml").write_text("program: {type: nope}\n")
    try:
        tab.goto("/jobs")
        tab.click("#reload")
        confirm(tab, "Read every job file")
        result = tab.locator("#reload-result")
        expect(result.locator(".reload-added")).to_contain_text("fresh/new one")
        expect(result).to_contain_text("1 file failed to load")
        expect(result).to_contain_text("fresh/broken.yaml: program.type")
        expect(tab.locator('#jobs-tree li.job[data-job-id="fresh/new one"]')).to_be_visible()
    finally:
        for name in ("new one.yaml", "broken.yaml"):
            (server.jobs_dir / "fresh" / name).unlink()
        server.post("/jobs/reload")


def test_a_json_view_of_a_run_and_of_a_job(tab: Page, server: Server) -> None:
    run_id = server.schedule(f"esc/{HOSTILE}", {"x": HOSTILE})
    server.wait_finished(run_id)
    tab.goto(f"/runs/{run_id}")
    expect(tab.locator("#json")).to_be_hidden()
    tab.click("#json-toggle")
    text = tab.locator("#json-text")
    expect(text).to_contain_text(f'"run_id": "{run_id}"')
    expect(text).to_contain_text('"exit_code": 0')
    assert HOSTILE in text.inner_text() and tab.locator("main img").count() == 0
    tab.goto(f"/jobs/esc/{HOSTILE}")
    tab.click("#json-toggle")
    expect(tab.locator("#json-text")).to_contain_text('"params": [')


def test_args_as_columns_for_one_job(tab: Page, server: Server) -> None:
    run_id = server.schedule("reports/daily", {"region": "emea", "day": "tue"})
    server.wait_finished(run_id)
    tab.goto("/jobs/reports/daily")
    expect(tab.locator(f'{row(run_id)} td[data-arg="region"]')).to_have_text("emea")
    headers = tab.locator("#job-runs thead th").all_inner_texts()
    assert [h.lower() for h in headers[2:4]] == ["region", "day"], headers
    tab.goto("/runs?job=reports/daily")
    expect(tab.locator(f'#runs {row(run_id)} td[data-arg="day"]')).to_have_text("tue")
    tab.goto("/runs?job=ops/")  # several jobs: args as chips again
    expect(tab.locator("#runs td[data-arg]")).to_have_count(0)


def test_lateness_marker(tab: Page, server: Server) -> None:
    started = server.post("/runs", {"job_id": "ops/quiet", "time": iso(-90)})["run"]["run_id"]
    server.wait_finished(started)
    waiting = server.post("/runs", {"job_id": "ops/blocked", "time": iso(-30)})["run"]["run_id"]
    server.wait_state(waiting, "waiting")
    tab.goto("/runs?job=ops/")
    expect(tab.locator(f"{row(started)} .chip.late")).to_have_text(re.compile(r"^late 1m 3\ds$"))
    live = tab.locator(f"{row(waiting)} .chip.late")
    expect(live).to_have_text(re.compile(r"^late 3\ds$"))
    first = live.inner_text()
    expect(live).not_to_have_text(first, timeout=3000)  # it ticks
    server.post(f"/runs/{waiting}/skip")


def test_paths_breadcrumbs_and_folder_terms(tab: Page, server: Server) -> None:
    tab.goto("/jobs?q=/ops/")
    expect(tab.locator("#jobs-tree li.job").first).to_be_visible()
    ids = tab.locator("#jobs-tree li.job").evaluate_all("els => els.map(e => e.dataset.jobId)")
    assert ids and all(i.startswith("ops/") for i in ids), ids
    expect(tab.locator("#jobs-crumbs .crumbs")).to_contain_text("All jobs / ops")
    tab.click("#jobs-crumbs a:has-text('All jobs')")
    expect(tab).to_have_url(re.compile(r"/jobs$"))
    tab.click('#jobs-tree li.folder[data-folder="reports/"] > details > summary a')
    expect(tab).to_have_url(re.compile(r"/jobs\?q=%2Freports%2F$"))
    expect(tab.locator("#jobs-tree li.job")).to_have_count(1)
    tab.click("#jobs-tree li.job a")
    crumbs = tab.locator(".page-head .crumbs")
    expect(crumbs).to_contain_text("Jobs / reports /")
    run_id = server.schedule("reports/daily", {"region": "apac", "day": "wed"})
    server.wait_finished(run_id)
    tab.goto("/runs")
    tab.locator(f"{row(run_id)} td.job a.folder").click()
    expect(tab).to_have_url(re.compile(r"/runs\?job=%2Freports%2F"))
    expect(tab.locator("#f-job")).to_have_value("/reports/")
    expect(tab.locator("#runs-crumbs")).to_contain_text("All jobs / reports")


def test_operations_on_each_row(tab: Page, server: Server) -> None:
    run_id = server.schedule("ops/long")
    server.wait_state(run_id, "running")
    tab.goto("/runs?job=ops/long")
    stop = tab.locator(f'{row(run_id)} button[data-op="stop"]')
    stop.click()
    cancel(tab)
    assert server.run(run_id)["state"] == "running"
    stop.click()
    confirm(tab, run_id)
    expect(tab.locator(row(run_id))).to_have_attribute("data-state", re.compile("success|failure"))
    tab.locator(f'{row(run_id)} button[data-op="rerun"]').click()
    confirm(tab, run_id)
    # The rerun shows right under the run it reruns, which counts it.
    rerun = tab.locator("#runs tr.rerun")
    expect(rerun).to_have_count(1)
    rerun_id = rerun.get_attribute("data-run-id")
    assert rerun_id and server.run(rerun_id)["rerun_of"] == run_id
    ids = tab.locator("#runs tr[data-run-id]").evaluate_all(
        "rows => rows.map(r => r.dataset.runId)"
    )
    assert ids.index(rerun_id) == ids.index(run_id) + 1, ids
    expect(tab.locator(f"{row(run_id)} .rerun-count")).to_have_text("↻1")
    server.post(f"/runs/{rerun_id}/kill")
    server.wait_finished(rerun_id)


def test_the_favicon_shows_running_and_failed(tab: Page, server: Server) -> None:
    tab.goto("/runs")
    icon = tab.locator('link[rel="icon"]')
    run_id = server.schedule("ops/long")
    expect(icon).to_have_attribute("data-status", "running")
    frames = set()
    for _ in range(6):  # it turns
        frames.add(icon.get_attribute("href"))
        tab.wait_for_timeout(200)
    assert len(frames) > 1 and all(f and f.startswith("data:image/svg+xml,") for f in frames)
    server.post(f"/runs/{run_id}/kill")
    failed = server.schedule("ops/sleep then fail")
    server.wait_finished(failed)
    wait_for(lambda: all(r["state"] not in ("running", "stopping") for r in _active(server)), 10)
    expect(icon).to_have_attribute("data-status", "failed")


def _active(server: Server) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = server.get("/runs", params={"state": "starting,running,stopping"})[
        "runs"
    ]
    return runs


def test_the_sanity_checks_as_a_banner(tab: Page, server: Server) -> None:
    job_id = f"ops/fails {HOSTILE}"
    for _ in range(2):
        server.wait_finished(server.schedule(job_id))
    tab.goto("/jobs")
    expect(tab.locator("#jobs-tree li.job").first).to_be_visible()
    finding = tab.locator('#checks li.finding[data-check="failing"]', has_text=job_id)
    expect(finding).to_have_count(0)  # two failures are not yet a pattern
    third = server.schedule(job_id)
    server.wait_finished(third)
    # A third failure in a row: the banner says so without a reload.
    expect(finding).to_contain_text(f"job {job_id}: its last 3 runs failed")
    expect(finding.locator(".severity")).to_have_text("warning")
    finding.locator("a").click()
    expect(tab).to_have_url(re.compile(rf"/runs/{third}$"))
    assert tab.locator("img").count() == 1  # the brand's: none from the job id


def test_pages_fit_a_phone(browser: Browser, server: Server) -> None:
    long = server.post("/runs", {"program": {"type": "shell", "command": "echo " + "x" * 300}})
    server.wait_finished(long["run"]["run_id"])
    wide = server.schedule("reports/daily", {"region": "y" * 300, "day": "thu"})
    server.wait_finished(wide)
    context = browser.new_context(base_url=server.url, viewport={"width": 390, "height": 844})
    page = context.new_page()
    try:
        for path, ready in [
            ("/runs", "#runs tr[data-run-id]"),
            (f"/runs/{long['run']['run_id']}", "#output"),  # a long command and output line
            (f"/runs/{wide}", "#output"),  # a long arg
            ("/jobs", "#jobs-tree li.job"),
            ("/jobs/ops/every weekday", "#program"),
            ("/agents", "#agents tr[data-agent-id]"),
        ]:
            page.goto(path)
            page.wait_for_selector(ready)
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= 390, (path, width)  # wide tables scroll inside their panel
    finally:
        context.close()
