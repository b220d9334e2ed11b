"""The Experiments pages in a real browser (headless Chromium through Playwright) against the session's stack, on
experiments fed over HTTP as a client feeds them (answers asked for, their impressions and clicks posted citing
each answer's recommendation id, in rounds a series bucket apart): an A/B test's and an interleaving's numbers
as the API reports them, and their cumulative series drawn as one SVG path per variant and redrawn as events
come; a reader's key offered no action; an admin's pausing and resuming through the page, and shown the API's
refusal of a promotion that no variant has won."""

from __future__ import annotations

import itertools
import re
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from playwright.sync_api import Browser, Page, expect

from shared.infra.settings import Settings
from tests.helpers import two_versions
from tests.ui.test_dashboard import serving

Shoot = Callable[[Page, str], Path]
Started = tuple[str, list[dict[str, Any]]]
"""An experiment's name, and the round of its events not posted yet."""

K = 5
"""Items an answer shows, and the experiments' CTR@k."""
MIN_USERS = 4
"""Users asked for answers until each A/B variant has this many (an interleaving: twice as many, in all)."""
ROUNDS = 3
"""Events are posted in this many rounds, a bucket (1 s) apart: the series' points."""
CLICKS = (2, 0, 1)
"""The i-th user of a variant clicks CLICKS[i % 3] of their items: the same for every variant, so an A/B test is
a tie (no promotion without naming the variant); the users who click two also rate the first 4.5 (liked)."""


@pytest.fixture(scope="module")
def versions(api_url: str) -> Iterator[list[str]]:
    """Two trained, indexed versions of ml-latest-small (seeds 1 and 2, as tests/system/test_online.py trains),
    the first active (answers and events need one); afterwards no experiment of this module is left and the model
    active before it is active again."""
    active = requests.get(f"{api_url}/v1/models", timeout=10).json()["active"]
    made = two_versions(api_url)
    yield made
    for experiment in requests.get(f"{api_url}/v1/experiments", timeout=10).json()["experiments"]:
        if experiment["name"].startswith("ui-"):
            drop(api_url, experiment["name"])
    requests.post(f"{api_url}/v1/models/{active or made[0]}/activate", timeout=10)


def drop(api_url: str, name: str) -> None:
    """End an experiment (a running one cannot be deleted) and delete it."""
    requests.post(f"{api_url}/v1/experiments/{name}/end", timeout=10)
    requests.delete(f"{api_url}/v1/experiments/{name}", timeout=10)


def recommend(api_url: str, user: int) -> dict[str, Any]:
    r = requests.post(f"{api_url}/v1/recommendations", json={"user_id": user, "k": K}, params={"wait": 30},
                      timeout=60)  # fmt: skip
    assert r.status_code == 200, r.text
    return dict(r.json())


def events_of(user: int, answer: dict[str, Any], clicks: int) -> list[dict[str, Any]]:
    """What a user did with an answer: saw every item, clicked its first ``clicks``, liked the first clicked one
    when they clicked two."""
    cite = {"user_id": user, "recommendation_id": answer["recommendation_id"]}
    items = [item["movie_id"] for item in answer["items"]]
    return [
        *({"type": "impression", "movie_id": m, **cite} for m in items),
        *({"type": "click", "movie_id": m, **cite} for m in items[:clicks]),
        *([{"type": "rating", "movie_id": items[0], "rating": 4.5, **cite}] if clicks == 2 else []),
    ]


def post_events(api_url: str, events: list[dict[str, Any]]) -> None:
    r = requests.post(f"{api_url}/v1/events", json={"events": events}, timeout=30)
    assert r.status_code == 200 and r.json()["credited"] == len(events), r.text


def feed(api_url: str, kind: str) -> list[list[dict[str, Any]]]:
    """Answers for users 1, 2, ... until there are enough; their events, in ``ROUNDS`` rounds of each variant's
    users (the i-th user of a variant in round i % ROUNDS)."""
    by_variant: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for user in range(1, 61):
        answer = recommend(api_url, user)
        by_variant.setdefault(answer["experiment"]["variant"], []).append((user, answer))
        if kind == "interleave" and len(by_variant["interleaved"]) >= 2 * MIN_USERS:
            break
        if len(by_variant) == 2 and min(map(len, by_variant.values())) >= MIN_USERS:
            break
    rounds: list[list[dict[str, Any]]] = [[] for _ in range(ROUNDS)]
    for users in by_variant.values():
        for i, (user, answer) in enumerate(users):
            rounds[i % ROUNDS] += events_of(user, answer, CLICKS[i % len(CLICKS)])
    return rounds


def post_round(api_url: str, events: list[dict[str, Any]]) -> None:
    """Post one round in a bucket of its own: the next whole second (``bucket_s`` is 1)."""
    time.sleep(1.02 - time.time() % 1)
    post_events(api_url, events)


@pytest.fixture
def experiment(api_url: str, versions: list[str]) -> Iterator[Callable[[str], Started]]:
    """``start(kind)``: an experiment of the two versions (``k`` 5, a point a second) with all but its last round
    of events posted; its name and that last round. Deleted after the test, the model active before it active
    again. (Asked for before ``page``, so the page has gone before the experiment does.)"""
    active = requests.get(f"{api_url}/v1/models", timeout=10).json()["active"]
    made: list[str] = []

    def start(kind: str) -> Started:
        name = f"ui-{kind}-{uuid.uuid4().hex[:6]}"
        body = {"name": name, "kind": kind, "k": K, "bucket_s": 1,
                "variants": [{"model": versions[0]}, {"model": versions[1]}]}  # fmt: skip
        r = requests.post(f"{api_url}/v1/experiments", json=body, timeout=10)
        assert r.status_code == 201, r.text
        made.append(name)
        *first, last = feed(api_url, kind)
        for events in first:
            post_round(api_url, events)
        return name, last

    yield start
    for name in made:
        drop(api_url, name)
    requests.post(f"{api_url}/v1/models/{active or versions[0]}/activate", timeout=10)


def report_of(api_url: str, name: str) -> dict[str, Any]:
    r = requests.get(f"{api_url}/v1/experiments/{name}", timeout=10)
    assert r.status_code == 200, r.text
    return dict(r.json())


def numbers(text: str) -> list[float]:
    return [float(n) for n in re.findall(r"\d+(?:\.\d+)?", text)]


def as_shown(rate: dict[str, Any]) -> list[float]:
    """A rate's value and interval as the page writes them: percentages to one decimal."""
    return [round(100 * rate[part], 1) for part in ("value", "low", "high")]


def path_points(page: Page, variant: str) -> list[tuple[float, float]]:
    d = page.locator(f'svg.plot path.series[data-variant="{variant}"]').get_attribute("d") or ""
    assert re.fullmatch(r"M[\d.]+,[\d.]+( L[\d.]+,[\d.]+)*", d), d
    return [(float(x), float(y)) for x, y in re.findall(r"([\d.]+),([\d.]+)", d)]


def test_an_ab_test_s_page_shows_its_numbers_and_draws_its_series(
    experiment: Callable[[str], Started], page: Page, api_url: str, screenshot: Shoot
) -> None:
    name, rest = experiment("ab")
    page.goto(f"{api_url}/ui/experiments")
    row = page.locator(f'tr[data-experiment="{name}"]')
    expect(row).to_contain_text("A/B test")
    expect(row.locator("[data-state]")).to_have_text("running")
    expect(row).to_contain_text("not significant")
    row.get_by_role("link", name=name).click()
    expect(page).to_have_url(f"{api_url}/ui/experiments/{name}")
    expect(page.locator("nav a[aria-current=page]")).to_have_text("Experiments")

    report = report_of(api_url, name)
    points = len(report["series"]["points"])
    assert points == ROUNDS - 1, report["series"]
    for variant in report["variants"]:
        tr = page.locator(f'table.variants tr[data-variant="{variant["name"]}"]')
        for column in ("users", "impressions", "clicks"):
            expect(tr.locator(f"td.{column}")).to_have_text(str(variant[column]))
        assert numbers(tr.locator("td.ctr").inner_text()) == pytest.approx(as_shown(variant["ctr"]), abs=0.051)
        assert numbers(tr.locator("td.liked").inner_text()) == pytest.approx(as_shown(variant["liked_rate"]), abs=0.051)
    b = report["variants"][1]
    assert not b["vs_control"]["ctr"]["significant"]
    vs = page.locator('table.variants tr[data-variant="B"] td.vs-ctr')
    expect(vs).to_contain_text("a tie")
    expect(vs).to_contain_text(f"p = {b['vs_control']['ctr']['p_value']:.3f}")
    expect(page.locator("[data-fact=ahead]")).to_contain_text("a tie so far")
    expect(page.locator("button[data-action=pause]")).to_be_visible()  # an open API: anyone may act

    # The plot: one path a variant, a point per bucket; each variant's last point at its CTR so far, the higher
    # CTR drawn higher (SVG's y grows downwards).
    expect(page.locator("svg.plot path.series")).to_have_count(2)
    expect(page.locator("svg.plot")).to_contain_text("CTR@5, cumulative")
    expect(page.locator("svg.plot")).to_contain_text("time (UTC)")
    expect(page.locator("ul.legend li")).to_have_count(2)
    drawn = {v["name"]: path_points(page, v["name"]) for v in report["variants"]}
    assert all(len(line) == points for line in drawn.values()), drawn
    a_ctr, b_ctr = (v["ctr"]["value"] for v in report["variants"])
    if a_ctr != b_ctr:
        assert (drawn["A"][-1][1] < drawn["B"][-1][1]) == (a_ctr > b_ctr), (drawn, a_ctr, b_ctr)

    # More events, a bucket later: the page's next poll draws one more point on every line.
    post_round(api_url, rest)
    for variant in ("A", "B"):
        expect(page.locator(f'svg.plot path.series[data-variant="{variant}"]')).to_have_attribute(
            "d", re.compile(r"^M[^ ]+" + " L[^ ]+" * (ROUNDS - 1) + "$"), timeout=10_000)  # fmt: skip
    final = report_of(api_url, name)
    for variant in final["variants"]:
        tr = page.locator(f'table.variants tr[data-variant="{variant["name"]}"]')
        expect(tr.locator("td.impressions")).to_have_text(str(variant["impressions"]))
    screenshot(page, "experiment")


def test_an_interleaving_s_page_shows_its_wins_and_each_team_s_clicks_over_time(
    experiment: Callable[[str], Started], page: Page, api_url: str
) -> None:
    name, rest = experiment("interleave")
    post_round(api_url, rest)
    report = report_of(api_url, name)
    page.goto(f"{api_url}/ui/experiments")
    expect(page.locator(f'tr[data-experiment="{name}"]')).to_contain_text("interleaving")
    page.goto(f"{api_url}/ui/experiments/{name}")
    totals, outcome = report["totals"], report["interleaving"]
    facts = page.locator("dl.interleaving")
    expect(facts.locator('[data-fact="impressions"]')).to_have_text(str(totals["impressions"]))
    expect(facts.locator('[data-fact="clicks"]')).to_have_text(str(totals["clicks"]))
    expect(facts.locator('[data-fact="users preferring A"]')).to_have_text(str(outcome["wins_a"]))
    expect(facts.locator('[data-fact="users preferring B"]')).to_have_text(str(outcome["wins_b"]))
    expect(facts.locator('[data-fact="ties"]')).to_have_text(str(outcome["ties"]))
    verdict = "significant" if outcome["significant"] else "a tie"
    expect(facts.locator('[data-fact="sign test"]')).to_contain_text(verdict)
    always = outcome["always_valid_p"]
    expect(facts.locator('[data-fact="sign test"]')).to_contain_text(
        "always valid " + ("p < 0.001" if always < 0.001 else f"p = {always:.3f}")
    )
    if outcome.get("preferred"):
        valid = str(outcome["preferred"]["always_valid_significant"]).lower()
        expect(page.locator(f'.verdict [data-always-valid="{valid}"]').first).to_be_visible()
    assert numbers(facts.locator(f'[data-fact="CTR@{K}"]').inner_text()) == pytest.approx(
        as_shown(totals["ctr"]), abs=0.051
    )
    expect(page.locator("svg.plot path.series")).to_have_count(2)
    expect(page.locator("svg.plot")).to_contain_text("clicks credited, cumulative")
    ys = {team: [y for _, y in path_points(page, team)] for team in ("A", "B")}
    assert all(len(line) == ROUNDS for line in ys.values()), ys
    # Cumulative clicks never fall (SVG's y grows downwards), and the team credited more ends higher.
    assert all(later <= earlier for line in ys.values() for earlier, later in itertools.pairwise(line)), ys
    a, b = outcome["clicks"]["A"], outcome["clicks"]["B"]
    if a != b:
        assert (ys["A"][-1] < ys["B"][-1]) == (a > b), (ys, outcome)


@pytest.fixture
def roles_server(settings: Settings) -> Iterator[tuple[str, dict[str, str]]]:
    """The API with a reader's key and an admin's of the session's tenant, served from this process."""
    from api import create_app

    keys = {"reader": "experiments-reader-" + "r" * 8, "admin": "experiments-admin-" + "a" * 8}
    entries = tuple(f"default:{role}:{key}" for role, key in keys.items())
    with serving(create_app(settings=settings.model_copy(update={"api_keys": entries}))) as url:
        yield url, keys


def test_a_reader_is_offered_no_action_and_an_admin_pauses_resumes_and_sees_a_refusal(
    experiment: Callable[[str], Started],
    roles_server: tuple[str, dict[str, str]],
    page: Page,
    browser: Browser,
    api_url: str,
) -> None:
    # The fixtures in this order are torn down the other way: the page goes before its server stops answering
    # its polls (a refused connection is a console error), and both before the experiment is deleted.
    name, _ = experiment("ab")
    url, keys = roles_server
    users = report_of(api_url, name)["variants"][0]["users"]
    page.goto(f"{url}/ui/experiments/{name}")
    page.fill("#key-input", keys["reader"])
    page.click("#key-form button")
    expect(page.locator('table.variants tr[data-variant="A"] td.users')).to_have_text(str(users))
    expect(page.locator("[data-fact=state]")).to_have_text("running")
    assert page.locator("#experiment button").count() == 0  # drawn with the facts, in the same step
    expect(page.locator("svg.plot path.series")).to_have_count(2)
    # (the page fixture checks that the reader's page met no refusal: no 403 in its console)

    # An admin, in a tab of its own: its console may show the key prompt's 401 and the one refusal asked for
    # (409), and nothing else.
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    admin = context.new_page()
    errors: list[str] = []
    admin.on("pageerror", lambda error: errors.append(str(error)))
    admin.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    try:
        admin.goto(f"{url}/ui/experiments/{name}")
        admin.fill("#key-input", keys["admin"])
        admin.click("#key-form button")
        status = admin.locator("#experiment-status")
        admin.click("button[data-action=pause]")
        expect(status).to_have_text(f"{name} is paused")
        expect(admin.locator("[data-fact=state]")).to_have_text("paused")
        assert report_of(api_url, name)["state"] == "paused"
        expect(admin.locator("button[data-action=pause]")).to_have_count(0)
        admin.click("button[data-action=resume]")
        expect(status).to_have_text(f"{name} is running")
        assert report_of(api_url, name)["state"] == "running"

        active = requests.get(f"{api_url}/v1/models", timeout=10).json()["active"]
        admin.click("button[data-action=promote]:not([data-variant])")
        expect(status).to_have_class("error")
        expect(status).to_contain_text(f"no variant of '{name}' has won yet by the always-valid test")
        assert report_of(api_url, name)["state"] == "running"
        assert requests.get(f"{api_url}/v1/models", timeout=10).json()["active"] == active
        expect(admin.locator("button[data-action=promote]:not([data-variant])")).to_be_enabled()
    finally:
        context.close()
    assert [e for e in errors if "401" not in e and "409" not in e] == [], errors  # 401: the key prompt
    assert any("409" in e for e in errors), errors
