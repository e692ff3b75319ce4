"""Screenshots of the main pages, against a real server with the example jobs.

.venv/bin/python -m tests.e2e.screenshots [OUT_DIR]   (default docs/screenshots)
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from tests.e2e.browser import chromium, page
from tests.harness import running_server

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


def jobs(examples: Path) -> dict[str, str]:
    found = {
        str(p.relative_to(examples))[: -len(".yaml")]: p.read_text()
        for p in examples.rglob("*.yaml")
    }
    return {**found, **EXTRA}


def take(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="apsis-shots-"))
    try:
        with running_server(root, jobs(ROOT / "examples" / "jobs")) as server:
            for job_id in ("demo/hello", "demo/colours", "demo/hello"):
                server.wait_finished(server.schedule(job_id), 20)
            server.wait_finished(server.schedule("demo/sleep then fail", {"seconds": "0.2"}), 20)
            colours = server.schedule("demo/colours")
            server.wait_finished(colours)
            rerun = server.post(f"/runs/{colours}/rerun")["run"]["run_id"]
            server.wait_finished(rerun)
            long = server.schedule("demo/long")
            server.wait_state(long, "running")
            errors: list[str] = []
            with chromium() as browser, page(browser, server.url, errors) as tab:
                shots = [
                    ("runs", "/runs", "#runs tr[data-run-id]"),
                    ("run", f"/runs/{colours}", "#output span"),
                    ("jobs", "/jobs", "#jobs-tree li.job"),
                    ("job", "/jobs/trading/report", "#program"),
                    ("agents", "/agents", "#agents tr[data-agent-id]"),
                ]
                for name, url, ready in shots:
                    tab.goto(url)
                    tab.wait_for_selector(ready)
                    tab.wait_for_timeout(300)
                    tab.screenshot(path=str(out / f"{name}.png"), full_page=True)
            server.post(f"/runs/{long}/kill")
            if errors:
                raise SystemExit(f"browser errors: {errors}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    take(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "screenshots")
