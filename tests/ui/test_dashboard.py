"""The dashboard in a real browser (headless Chromium through Playwright) against the session's real stack: a
pipeline submitted from the page, its progress bar seen moving and finishing, recommendations asked for by
typing a title, each page screenshotted; then a server with API keys, where the page asks for one, and
hostile text shown as text."""

from __future__ import annotations

import contextlib
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from playwright.sync_api import Page, expect
from werkzeug.serving import make_server

from cli.stack import free_port
from shared.infra.settings import Settings
from tests.helpers import wait_job, wait_until

Shoot = Callable[[Page, str], Path]
PIPELINE_TIMEOUT_S = 600


def progress_of(page: Page, job_id: str) -> tuple[str, int]:
    row = page.locator(f'tr[data-job="{job_id}"]')
    if row.count() == 0:
        return "", -1
    return row.get_attribute("data-status") or "", int(row.locator("progress").get_attribute("value") or -1)


def test_a_pipeline_from_the_page_then_recommendations_by_title(page: Page, api_url: str, screenshot: Shoot) -> None:
    page.goto(f"{api_url}/ui/jobs")
    # A seed of its own: mining and training run again (the encoder's vectors are cached), so there is progress
    # to watch; everything else about the pipeline is what the other system tests run.
    page.fill("input[name=source]", "ml-latest-small")
    page.fill("input[name=options]", f'{{"epochs": 2, "seed": {random.randrange(1000, 2**31)}}}')
    page.click("#submit-form button[type=submit]")
    queued = page.get_by_role("status").filter(has_text="queued pipeline")
    expect(queued).to_be_visible(timeout=10_000)
    job_id = (queued.text_content() or "").split()[-1]

    seen: list[int] = []
    shot_running = False
    deadline = time.monotonic() + PIPELINE_TIMEOUT_S
    while time.monotonic() < deadline:
        status, value = progress_of(page, job_id)
        if value >= 0 and (not seen or seen[-1] != value):
            seen.append(value)
        if status == "running" and 0 < value < 100 and not shot_running:
            screenshot(page, "jobs-running")
            shot_running = True
        if status in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.2)
    assert status == "succeeded", (status, seen)
    assert seen[-1] == 100 and any(0 < v < 100 for v in seen) and len(seen) >= 3, seen
    stages = page.locator(f'tr[data-job="{job_id}"] ol.stages li')
    expect(stages).to_have_count(5)
    assert stages.evaluate_all("items => items.every(li => li.className === 'done')")
    screenshot(page, "jobs")

    result = requests.get(f"{api_url}/v1/jobs/{job_id}/result", timeout=10).json()
    page.goto(f"{api_url}/ui/")
    expect(page.locator("tr[data-queue=cpu]")).to_be_visible()
    expect(page.locator("dl.facts")).to_contain_text(result["model"])
    screenshot(page, "overview")

    page.goto(f"{api_url}/ui/models")
    expect(page.locator(f'tr[data-model="{result["model"]}"].active')).to_be_visible()
    screenshot(page, "models")

    page.goto(f"{api_url}/ui/try")
    page.fill("#title-search", "toy sto")
    suggestion = page.locator("#suggestions li", has_text="Toy Story (1995)")
    suggestion.get_by_role("button", name="Like", exact=True).click()
    expect(page.locator("ul[data-list=liked] li")).to_have_count(1)
    page.click("#ask-examples")
    rows = page.locator("#answer table.answer-items tbody tr")
    expect(rows).to_have_count(10, timeout=30_000)
    expect(page.locator("#answer")).to_contain_text("examples")
    shown = rows.locator("td.title").all_text_contents()
    direct = requests.post(f"{api_url}/v1/recommendations?wait=30", json={"liked": [1], "k": 10}, timeout=60).json()
    assert shown == [item["title"] for item in direct["items"]]
    screenshot(page, "try")
    page.click("#next-page")  # the same query's next page: none of the movies just answered
    expect(rows.first).not_to_have_text(shown[0], timeout=30_000)
    expect(rows).to_have_count(10)
    assert not set(rows.locator("td.title").all_text_contents()) & set(shown)
    page.fill("#year-min", "1990")
    page.fill("#year-max", "1999")
    page.click("#ask-examples")
    expect(rows.first.locator("td.title")).to_have_text(re.compile(r"\(199\d\)$"), timeout=30_000)
    assert all(re.search(r"\(199\d\)$", title) for title in rows.locator("td.title").all_text_contents())

    page.goto(f"{api_url}/ui/map")
    expect(page.get_by_role("status")).to_contain_text("ringed: the 10 movies of the last answer", timeout=30_000)
    assert page.locator("ul.legend li").count() >= 10
    box = page.locator("canvas#map").bounding_box()
    assert box is not None
    screenshot(page, "map")


@contextlib.contextmanager
def serving(app: Any) -> Iterator[str]:
    """``app`` served over real HTTP from a thread of this process: its base URL while it runs."""
    port = free_port()
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)


@pytest.fixture
def keyed_server(settings: Settings) -> Iterator[tuple[str, str]]:
    """The API with keys, served over real HTTP from this process, on the session stack's Redis and workers."""
    from api import create_app

    key = "dashboard-test-key-" + "x" * 8
    with serving(create_app(settings=settings.model_copy(update={"api_keys": (key,)}))) as url:
        yield url, key


@pytest.fixture
def tenants_server(settings: Settings) -> Iterator[tuple[str, dict[str, str]]]:
    """The API with a tenant's reader key and an operator's, served from this process on the session stack."""
    from api import create_app

    keys = {"reader": "dashboard-acme-reader-" + "r" * 8, "operator": "dashboard-operator-" + "o" * 8}
    entries = (f"acme:reader:{keys['reader']}", f"default:operator:{keys['operator']}")
    with serving(create_app(settings=settings.model_copy(update={"api_keys": entries}))) as url:
        yield url, keys


def test_the_overview_names_the_key_s_tenant_and_only_an_operator_sees_every_tenant(
    tenants_server: tuple[str, dict[str, str]], page: Page
) -> None:  # the server first: torn down after the page, whose polls it answers until then
    url, keys = tenants_server
    page.goto(f"{url}/ui/")
    page.fill("#key-input", keys["reader"])
    page.click("#key-form button")
    expect(page.locator("#tenant strong")).to_have_text("acme")
    expect(page.locator("tr[data-queue=cpu]")).to_be_visible()
    expect(page.locator("[data-status=succeeded] strong")).to_have_text("0")  # the session's jobs are not acme's
    assert page.locator("#tenants tr[data-tenant]").count() == 0
    page.evaluate("sessionStorage.clear()")
    page.goto(f"{url}/ui/")
    page.fill("#key-input", keys["operator"])
    page.click("#key-form button")
    expect(page.locator("#tenant strong")).to_have_text("default")
    expect(page.locator("#tenants tr[data-tenant=default]")).to_be_visible()


def test_the_page_asks_for_a_key_and_shows_hostile_text_as_text(keyed_server: tuple[str, str], page: Page,
                                                                 screenshot: Shoot) -> None:  # fmt: skip
    url, key = keyed_server
    page.goto(f"{url}/ui/")  # the page itself is open: it holds no data
    dialog = page.locator("#key-dialog")
    expect(dialog).to_be_visible()
    page.fill("#key-input", "wrong-key-but-long-enough")
    page.click("#key-form button")
    expect(page.locator("#key-error")).to_have_text("That key was refused.")
    page.fill("#key-input", key)
    page.click("#key-form button")
    expect(dialog).to_be_hidden()
    expect(page.locator("tr[data-queue=cpu]")).to_be_visible()

    hostile = 'x<img src=x onerror="window.pwned=1">'
    r = requests.post(f"{url}/v1/pipelines", json={"path": hostile}, headers={"Authorization": f"Bearer {key}"},
                      timeout=10)  # fmt: skip
    assert r.status_code == 202, r.text
    job_url, auth = f"{url}/v1/jobs/{r.json()['id']}", {"Authorization": f"Bearer {key}"}
    job: dict[str, Any] = wait_job(lambda: requests.get(job_url, headers=auth, timeout=10).json(), timeout_s=60)
    assert job["status"] == "failed"
    page.goto(f"{url}/ui/jobs")  # the key is kept for the tab
    message = page.locator(f'tr[data-job="{job["id"]}"] td.message')
    expect(message).to_contain_text(hostile)
    assert page.locator("td.message img").count() == 0
    assert page.evaluate("window.pwned") is None
    screenshot(page, "jobs-failed")
    wait_until(lambda: page.locator("#key-dialog").is_hidden(), timeout_s=5)
