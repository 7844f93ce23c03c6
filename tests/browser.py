"""Pages in a real browser: the gateway served by uvicorn on a free loopback port, and Debian's
Chromium driven by Playwright. Without a Chromium (``make test`` installs Debian's package where
it can) the browser tests are skipped and say why."""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from hitlflow.gateway import create_app
from hitlflow.settings import Settings
from hitlflow.stack import free_port

#: Where the pages' screenshots go (kept after the run: look at them).
SCREENSHOTS = Path(os.environ.get("HITLFLOW_SCREENSHOTS", "test-output/screenshots"))


def chromium_path() -> str | None:
    """Debian's Chromium (or ``HITLFLOW_CHROMIUM``)."""
    given = os.environ.get("HITLFLOW_CHROMIUM")
    if given:
        return given
    return shutil.which("chromium") or shutil.which("chromium-browser")


class LiveGateway:
    """The gateway app served over real HTTP from a thread of its own."""

    def __init__(self, settings: Settings) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=self.port,
                                log_level="warning", lifespan="on", timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=lambda: asyncio.run(self.server.serve()),
                                       name="live-gateway", daemon=True)

    def __enter__(self) -> LiveGateway:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError(f"the gateway did not start on {self.url}")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


@contextmanager
def browser_context(record: str) -> Iterator[Any]:
    """A fresh headless Chromium context; skips the test when no browser can be started."""
    executable = chromium_path()
    if executable is None:
        pytest.skip("no Chromium: install Debian's 'chromium' package (make test does where "
                    "apt-get may) or set HITLFLOW_CHROMIUM")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (it is in the dev extras)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True,
                                             args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900},
                                          accept_downloads=True)
            context.set_default_timeout(15_000)
            yield context
        finally:
            browser.close()


def shot(page: Any, folder: str, name: str) -> Path:
    """A full-page screenshot under SCREENSHOTS/folder/name.png."""
    path = SCREENSHOTS / folder / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), full_page=True)
    return path
