"""Headless Chromium for the browser tests: the system `chromium`, never a downloaded one."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

from playwright.sync_api import Browser, ConsoleMessage, Page, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # A name that resolves to this machine, as a rebinding DNS server would make it.
    "--host-resolver-rules=MAP attacker.example 127.0.0.1",
]


def available() -> bool:
    return CHROMIUM.exists() or shutil.which("chromium") is not None


@contextlib.contextmanager
def chromium() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield browser
        finally:
            browser.close()


@contextlib.contextmanager
def page(browser: Browser, base_url: str, errors: list[str]) -> Iterator[Page]:
    """A fresh page; console errors and page errors are gathered into `errors`."""
    context = browser.new_context(base_url=base_url, viewport={"width": 1360, "height": 860})
    tab = context.new_page()

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            errors.append(message.text)

    tab.on("console", on_console)
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    tab.set_default_timeout(10_000)
    try:
        yield tab
    finally:
        context.close()
