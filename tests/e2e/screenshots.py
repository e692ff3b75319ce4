"""Screenshots of every page, at 1400x900 and on a 390-px-wide phone, against a real
server with the example jobs; the browser's zone is Paris, so times show a zone.

.venv/bin/python -m tests.e2e.screenshots [OUT_DIR]   (default docs/screenshots)

Writes NAME.png and NAME-phone.png for each page below.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from playwright.sync_api import Browser, Page, ViewportSize

from tests.e2e.browser import chromium
from tests.harness import Server, running_server

ROOT = Path(__file__).resolve().parents[2]
COLOURS = (
    "printf '\\033[1mbuilding\\033[0m report\\n'; sleep 0.2; "
    "printf '\\033[32mok\\033[0m   step 1: fetch prices\\n'; "
    "printf '\\033[33mwarn\\033[0m step 2: 3 prices stale\\n'; "
    "printf '\\033[31merror\\033[0m step 3: retrying\\n'; "
    "printf '\\033[36m[info]\\033[0m \\033[4mdone\\033[0m in 0.4 s\\n'"
)
EXTRA = {
    "demo/colours": (
        "metadata:\n  labels: [demo]\n  description: |\n    Prints **coloured** output.\n"
        f"program: {{type: shell, command: {COLOURS!r}}}\n"
    ),
    "demo/long": "metadata: {labels: [demo]}\nprogram: 'echo working; sleep 600'\n",
}
VIEWPORTS: dict[str, ViewportSize] = {
    "": {"width": 1400, "height": 900},
    "-phone": {"width": 390, "height": 844},
}


def jobs(examples: Path) -> dict[str, str]:
    found = {
        str(p.relative_to(examples))[: -len(".yaml")]: p.read_text()
        for p in examples.rglob("*.yaml")
    }
    return {**found, **EXTRA}


def _runs(server: Server) -> dict[str, str]:
    """Runs to show: successes, a failure, a rerun, an ad-hoc command, one running."""
    for job_id in ("demo/hello", "demo/colours", "demo/hello"):
        server.wait_finished(server.schedule(job_id), 20)
    server.wait_finished(server.schedule("demo/sleep then fail", {"seconds": "0.2"}), 20)
    for date in ("2026-12-03", "2026-12-04"):
        server.wait_finished(server.schedule("demo/every weekday", {"date": date}), 20)
    colours = server.schedule("demo/colours")
    server.wait_finished(colours)
    server.wait_finished(server.post(f"/runs/{colours}/rerun")["run"]["run_id"])
    program = {"type": "shell", "command": "df -h / | tail -1"}
    adhoc = server.post("/runs", {"program": program})["run"]["run_id"]
    server.wait_finished(adhoc)
    long = server.schedule("demo/long")
    server.wait_state(long, "running")
    return {"colours": colours, "adhoc": adhoc, "long": long}


def _shots(runs: dict[str, str]) -> list[tuple[str, str, str, Callable[[Page], None] | None]]:
    """(name, URL, what to wait for, what to do first)."""

    def adhoc_form(tab: Page) -> None:
        tab.click("#adhoc-open")
        tab.fill("#adhoc-command", "du -sh /var/log/*")
        tab.fill("#adhoc-host", "db7.example.com")

    def reload(tab: Page) -> None:
        tab.click("#reload")
        tab.click('dialog#confirm button[value="confirm"]')
        tab.wait_for_selector("#reload-result")

    return [
        ("runs", "/runs", "#runs tr[data-run-id]", None),
        ("runs-upcoming", "/runs?upcoming=1", "#runs tr.future", None),
        ("adhoc", "/runs", "#runs tr[data-run-id]", adhoc_form),
        ("run", f"/runs/{runs['colours']}", "#output span", None),
        ("run-adhoc", f"/runs/{runs['adhoc']}", "#run-command", None),
        ("jobs", "/jobs", "#jobs-tree li.job", reload),
        ("job", "/jobs/demo/every weekday", "#job-runs tr[data-run-id]", None),
        ("agents", "/agents", "#agents tr[data-agent-id]", None),
    ]


def _take_all(browser: Browser, server: Server, out: Path, runs: dict[str, str]) -> list[str]:
    errors: list[str] = []
    for suffix, viewport in VIEWPORTS.items():
        context = browser.new_context(
            base_url=server.url, viewport=viewport, timezone_id="Europe/Paris"
        )
        tab = context.new_page()
        tab.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        tab.on("pageerror", lambda exc: errors.append(str(exc)))
        for name, url, ready, before in _shots(runs):
            tab.goto(url)
            tab.wait_for_selector(ready)
            if before is not None:
                before(tab)
            tab.mouse.move(0, 0)  # no row highlighted by where the last click left it
            tab.wait_for_timeout(400)
            tab.screenshot(path=str(out / f"{name}{suffix}.png"), full_page=True)
        context.close()
    return errors


def take(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="apsis-shots-"))
    try:
        config = "host_groups: {workers: {type: round-robin, hosts: [127.0.0.1]}}\n"
        with running_server(root, jobs(ROOT / "examples" / "jobs"), config) as server:
            runs = _runs(server)
            with chromium() as browser:
                errors = _take_all(browser, server, out, runs)
            server.post(f"/runs/{runs['long']}/kill")
            if errors:
                raise SystemExit(f"browser errors: {errors}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    take(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "screenshots")
