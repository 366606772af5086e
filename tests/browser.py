"""Debian's Chromium driven by Playwright, for the tests of pages."""

from __future__ import annotations

import threading
from typing import Any, Callable

from tests.processes import require_program

CHROMIUM = "/usr/bin/chromium"
# As root and on a closed network: no sandbox, no background connections.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def require_chromium() -> None:
    require_program(CHROMIUM, "chromium")


def in_browser(use: Callable[[Any], Any], timeout: float = 90) -> Any:
    """Run C{use(browser)} with a headless Chromium, on a thread of its own
    (Playwright's sync API runs its own loop), and return what it returns;
    its exception is raised here."""
    result: list = []
    failure: list = []

    def run() -> None:
        from playwright.sync_api import sync_playwright

        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                try:
                    result.append(use(browser))
                finally:
                    browser.close()
        except BaseException as error:  # reported on the test's thread
            failure.append(error)

    browsing = threading.Thread(target=run)
    browsing.start()
    browsing.join(timeout=timeout)
    assert not browsing.is_alive(), f"the browser did not finish in {timeout} s"
    if failure:
        raise failure[0]
    return result[0]
