"""Fixtures of the dashboard's browser tests: a real headless Chromium (Debian's package, which
``make system-packages`` installs) driven by Playwright, and a place for the screenshots each page test saves.

Screenshots go to ``$MOVIEREC_TEST_ARTIFACTS/screenshots`` (default ``.artifacts/screenshots``); with
``MOVIEREC_UPDATE_SCREENSHOTS=1`` they are also copied to ``docs/screenshots/``, the PNGs README.md shows.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.helpers import REPO

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
ARTIFACTS = Path(os.environ.get("MOVIEREC_TEST_ARTIFACTS", REPO / ".artifacts")) / "screenshots"
DOCS = REPO / "docs" / "screenshots"


def chromium_path() -> str | None:
    """The browser to drive: ``MOVIEREC_CHROMIUM``, else the first of ``CANDIDATES`` on PATH."""
    explicit = os.environ.get("MOVIEREC_CHROMIUM")
    if explicit:
        return explicit
    return next((found for name in CANDIDATES if (found := shutil.which(name))), None)


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    executable = chromium_path()
    if executable is None:
        pytest.skip(
            "no Chromium here: `make system-packages` installs Debian's chromium package (it needs apt-get and root); "
            "or set MOVIEREC_CHROMIUM to a Chromium or Chrome binary"
        )
    with sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where Chromium refuses its sandbox.
        launched = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    yield page
    context.close()
    # A script error or a refused resource (a CSP violation, a 404 asset) fails the test that caused it.
    assert not [e for e in errors if "401" not in e], errors


@pytest.fixture(scope="session")
def screenshot() -> Callable[[Page, str], Path]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    def shoot(page: Page, name: str) -> Path:
        path = ARTIFACTS / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        if os.environ.get("MOVIEREC_UPDATE_SCREENSHOTS") == "1":
            DOCS.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, DOCS / path.name)
        return path

    return shoot
