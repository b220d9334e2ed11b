"""What users did with what was served (issue #27), through real workers, Redis and HTTP: every answer's
recommendation id, events credited to it, A/B tests and interleavings with their metrics, pause, end, promote."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.helpers import cli, two_versions, wait_job

USERS = range(1, 61)


@pytest.fixture(scope="module")
def versions(api_url: str) -> Iterator[list[str]]:
    """Two trained, indexed versions of ml-latest-small (seeds 1 and 2), the first one active; no experiment is
    left behind."""
    made = two_versions(api_url)
    yield made
    for experiment in requests.get(f"{api_url}/v1/experiments", timeout=10).json()["experiments"]:
        requests.post(f"{api_url}/v1/experiments/{experiment['name']}/end", timeout=10)
        requests.delete(f"{api_url}/v1/experiments/{experiment['name']}", timeout=10)
    requests.post(f"{api_url}/v1/models/{made[0]}/activate", timeout=10)


@pytest.fixture
def experiment(api_url: str, versions: list[str]) -> Iterator[str]:
    """The name this test's experiment takes; deleted after it, and the first version active again."""
    yield "exp-test"
    requests.post(f"{api_url}/v1/experiments/exp-test/end", timeout=10)
    requests.delete(f"{api_url}/v1/experiments/exp-test", timeout=10)
    requests.post(f"{api_url}/v1/models/{versions[0]}/activate", timeout=10)


def recommend(api_url: str, body: dict[str, Any], **query: Any) -> dict[str, Any]:
    r = requests.post(f"{api_url}/v1/recommendations", json=body, params={"wait": 30, **query}, timeout=60)
    assert r.status_code == 200, r.text
    return dict(r.json())


def post_events(api_url: str, events: list[dict[str, Any]], status: int = 200) -> dict[str, Any]:
    r = requests.post(f"{api_url}/v1/events", json={"events": events}, timeout=30)
    assert r.status_code == status, r.text
    return dict(r.json())


def shown(answer: dict[str, Any], user_id: int) -> list[dict[str, Any]]:
    """An impression event for every item of a user's answer, citing it."""
    rid = answer["recommendation_id"]
    return [{"type": "impression", "user_id": user_id, "movie_id": item["movie_id"], "recommendation_id": rid}
            for item in answer["items"]]  # fmt: skip


def test_every_answer_carries_an_id_and_events_citing_it_are_logged_with_their_position(
    api_url: str, versions: list[str]
) -> None:
    user = recommend(api_url, {"user_id": 1, "k": 5})
    keywords = recommend(api_url, {"keywords": ["war", "drama"], "k": 5})
    r = requests.get(f"{api_url}/v1/movies/1/similar", params={"k": 5, "wait": 30}, timeout=60)
    similar = r.json()
    for answer in (user, keywords, similar):
        assert answer["recommendation_id"].startswith("r1.") and "experiment" not in answer
    # A job's answer (not waited for: no fast lane) carries one as well.
    r = requests.post(f"{api_url}/v1/recommendations", json={"user_id": 2, "k": 5}, params={"wait": 0}, timeout=30)
    job = wait_job(api_url, r.json()["id"])
    queued = requests.get(f"{api_url}{job['result_url']}", timeout=30).json()
    assert queued["recommendation_id"].startswith("r1.")

    third = user["items"][2]["movie_id"]
    stored = post_events(api_url, [
        *shown(user, 1),
        {"type": "click", "user_id": 1, "movie_id": third, "recommendation_id": user["recommendation_id"]},
        {"type": "play", "user_id": 7, "movie_id": similar["items"][0]["movie_id"],
         "recommendation_id": similar["recommendation_id"]},
        {"type": "click", "user_id": 3, "movie_id": 1},  # citing nothing: logged all the same
        {"type": "click", "user_id": 2, "movie_id": queued["items"][4]["movie_id"],
         "recommendation_id": queued["recommendation_id"], "position": 5},
    ])  # fmt: skip
    assert stored == {"accepted": 9, "credited": 0, "experiments": [], "replayed": False}
    log = requests.get(f"{api_url}/v1/events", params={"limit": 9}, timeout=10).json()["events"]
    newest = log[0]
    assert newest["user_id"] == 2 and newest["position"] == 5
    click = next(e for e in log if e["type"] == "click" and e["user_id"] == 1)
    assert click["movie_id"] == third and click["position"] == 3  # found from the answer
    assert next(e for e in log if e["type"] == "play")["position"] == 1
    assert "position" not in next(e for e in log if e["user_id"] == 3)


def test_a_batchs_csv_rows_carry_each_users_recommendation_id(api_url: str, versions: list[str]) -> None:
    r = requests.post(f"{api_url}/v1/jobs/recommend-batch", json={"users": [1, 2], "k": 3}, timeout=30)
    job = wait_job(api_url, r.json()["id"])
    text = requests.get(f"{api_url}/v1/jobs/{job['id']}/result", params={"format": "csv"}, timeout=30).text
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 6 and all(row["recommendation_id"].startswith("r1.") for row in rows)
    assert len({row["recommendation_id"] for row in rows if row["user_id"] == "1"}) == 1
    second = next(row for row in rows if row["user_id"] == "2" and row["rank"] == "2")
    event = {"type": "click", "user_id": 2, "movie_id": int(second["movie_id"]),
             "recommendation_id": second["recommendation_id"]}  # fmt: skip
    post_events(api_url, [event])
    assert requests.get(f"{api_url}/v1/events", params={"limit": 1}, timeout=10).json()["events"][0]["position"] == 2


def test_a_bad_event_is_400_naming_it_and_nothing_of_its_batch_is_stored(api_url: str, versions: list[str]) -> None:
    answer = recommend(api_url, {"user_id": 1, "k": 5})
    rid, movie = answer["recommendation_id"], answer["items"][0]["movie_id"]
    unshown = next(m for m in (1, 2, 3, 4, 5, 6, 7) if m not in {i["movie_id"] for i in answer["items"]})
    forged = rid[:-4] + ("AAAA" if not rid.endswith("AAAA") else "BBBB")
    before = requests.get(f"{api_url}/v1/events", params={"limit": 1}, timeout=10).json()["events"]
    bad = [
        ({"type": "click", "user_id": 1, "movie_id": movie, "recommendation_id": forged}, "did not make"),
        ({"type": "click", "user_id": 2, "movie_id": movie, "recommendation_id": rid}, "made for user 1"),
        (
            {"type": "click", "user_id": 1, "movie_id": unshown, "recommendation_id": rid},
            f"did not show movie {unshown}",
        ),
        ({"type": "click", "user_id": 1, "movie_id": movie, "recommendation_id": rid, "position": 2}, "at position 2"),
        ({"type": "click", "user_id": 1, "movie_id": 999_999_999}, "not in the active model's catalogue"),
        ({"type": "rating", "user_id": 1, "movie_id": movie, "rating": 9.0}, "off the dataset's scale"),
        ({"type": "rating", "user_id": 1, "movie_id": movie}, "a rating event has a rating"),
        ({"type": "click", "user_id": 1, "movie_id": movie, "recommendation_id": "r1.!!"}, "not a recommendation id"),
    ]
    good = {"type": "click", "user_id": 1, "movie_id": movie, "recommendation_id": rid}
    for event, words in bad:
        err = post_events(api_url, [good, event], status=400)["error"]
        assert err["details"]["rows"][0]["row"] == 1 and words in err["details"]["rows"][0]["problem"], err
    err = post_events(api_url, [{"type": "view", "user_id": 1, "movie_id": movie}], status=400)["error"]
    assert err["code"] == "validation_error"
    assert requests.get(f"{api_url}/v1/events", params={"limit": 1}, timeout=10).json()["events"] == before


def test_a_batch_retried_with_its_idempotency_key_is_stored_and_counted_once(
    api_url: str, versions: list[str], experiment: str
) -> None:
    body = {"name": experiment, "variants": [{"model": versions[0]}, {"model": versions[1]}], "seed": 3}
    assert requests.post(f"{api_url}/v1/experiments", json=body, timeout=10).status_code == 201
    answer = recommend(api_url, {"user_id": 4, "k": 5})
    batch = {"events": [*shown(answer, 4), {**shown(answer, 4)[0], "type": "click"}]}

    def post(key: str, payload: dict[str, Any]) -> requests.Response:
        return requests.post(f"{api_url}/v1/events", json=payload, headers={"Idempotency-Key": key}, timeout=30)

    first, retry = post("retry-me-1", batch), post("retry-me-1", batch)
    assert first.status_code == retry.status_code == 200, (first.text, retry.text)
    assert first.json() == {"accepted": 6, "credited": 6, "experiments": [experiment], "replayed": False}
    assert retry.json() == {**first.json(), "replayed": True}
    logged = requests.get(f"{api_url}/v1/events", params={"limit": 7}, timeout=10).json()["events"]
    assert sum(e.get("recommendation_id") == answer["recommendation_id"] for e in logged) == 6  # logged once
    variant = next(v for v in requests.get(f"{api_url}/v1/experiments/{experiment}", timeout=10).json()["variants"]
                   if v["users"])  # fmt: skip
    assert variant["impressions"] == 5 and variant["clicks"] == 1  # counted once
    # The key with another batch is refused; a key that is not 1 to 255 visible ASCII characters is a 400.
    reused = post("retry-me-1", {"events": batch["events"][:1]})
    assert reused.status_code == 409 and reused.json()["error"]["code"] == "idempotency_key_reused", reused.text
    for bad in ("x" * 256, "two words"):
        refused = post(bad, batch)
        assert refused.status_code == 400 and "Idempotency-Key" in refused.text, refused.text
    assert post("retry-me-2", batch).json()["replayed"] is False  # another key: another batch


def test_the_cli_starts_an_experiment_posts_a_file_of_events_once_and_promotes(
    api_url: str, versions: list[str], experiment: str, tmp_path: Path
) -> None:
    started = cli("experiment", "start", experiment, *versions, "--seed", "5", "--api", api_url)
    assert started.returncode == 0, started.stderr
    assert started.stdout.startswith(f"{experiment}: ab, running, k 10") and versions[1] in started.stdout
    lines = []
    for user in range(1, 31):
        answer = recommend(api_url, {"user_id": user, "k": 5})
        lines += [json.dumps(e) for e in shown(answer, user)]
        if answer["experiment"]["variant"] == "B":
            lines.append(json.dumps({**shown(answer, user)[0], "type": "click"}))
    (tmp_path / "events.jsonl").write_text("\n".join(lines) + "\n")
    first = cli("events", str(tmp_path / "events.jsonl"), "--batch", "40", "--api", api_url)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == f"stored {len(lines)} events; {len(lines)} credited to an experiment"
    again = cli("events", str(tmp_path / "events.jsonl"), "--batch", "40", "--api", api_url)  # a rerun: nothing new
    assert f"({len(lines)} of them by an earlier run, not stored again)" in again.stdout, again.stdout
    shown_ = cli("experiment", "show", experiment, "--api", api_url)
    a, b = (v for v in requests.get(f"{api_url}/v1/experiments/{experiment}", timeout=10).json()["variants"])
    assert a["impressions"] + b["impressions"] == 5 * 30 and b["clicks"] == b["users"] and a["clicks"] == 0
    assert f"impressions {b['impressions']:,}" in shown_.stdout and "always valid p" in shown_.stdout
    promoted = cli("experiment", "promote", experiment, "--variant", "B", "--api", api_url)
    assert promoted.returncode == 0 and f"{experiment}: ab, ended" in promoted.stdout, promoted.stderr
    assert requests.get(f"{api_url}/v1/models", timeout=10).json()["active"] == versions[1]
    listed = cli("experiment", "list", "--api", api_url)
    assert any(line.split()[:3] == [experiment, "ab", "ended"] for line in listed.stdout.splitlines())
    (tmp_path / "bad.jsonl").write_text('{"type": "view", "user_id": 1, "movie_id": 1}\n')
    bad = cli("events", str(tmp_path / "bad.jsonl"), "--api", api_url)
    assert bad.returncode == 1 and "batch 1 (events 1-1): 400 validation_error" in bad.stderr, bad.stderr


def test_an_ab_test_buckets_each_user_for_good_counts_their_events_and_promotes_its_winner(
    api_url: str, app: Any, versions: list[str], experiment: str
) -> None:
    body = {"name": experiment, "variants": [{"model": versions[0]}, {"model": versions[1], "name": "new"}],
            "seed": 7}  # fmt: skip
    r = requests.post(f"{api_url}/v1/experiments", json=body, timeout=10)
    assert r.status_code == 201, r.text
    assert [v["share"] for v in r.json()["variants"]] == [0.5, 0.5] and r.json()["state"] == "running"
    again = requests.post(f"{api_url}/v1/experiments", json={**body, "name": "other"}, timeout=10)
    assert again.status_code == 409 and "is running" in again.json()["error"]["message"]
    # Neither a model an experiment serves nor a running experiment can be deleted.
    assert requests.delete(f"{api_url}/v1/models/{versions[1]}", timeout=10).status_code == 409
    assert requests.delete(f"{api_url}/v1/experiments/{experiment}", timeout=10).status_code == 409

    variants: dict[int, str] = {}
    events = []
    for user in USERS:
        answer = recommend(api_url, {"user_id": user, "k": 5})
        name = answer["experiment"]["variant"]
        assert answer["experiment"]["name"] == experiment
        assert answer["model"] == (versions[1] if name == "new" else versions[0])
        variants[user] = name
        events += shown(answer, user)
        if name == "new":  # the new model's users click its first two items; the others' click nothing
            events += [{**e, "type": "click"} for e in shown(answer, user)[:2]]
    assert set(variants.values()) == {"A", "new"}
    # The same user, asked again over HTTP (gunicorn) and in this process (Flask's client), lands where it did.
    with app.test_client() as local:
        for user in (1, 2, 3, 4, 5):
            answer = local.post("/v1/recommendations?wait=30", json={"user_id": user, "k": 5}).get_json()
            assert answer["experiment"]["variant"] == variants[user]
    assert post_events(api_url, events)["credited"] == len(events)

    report = requests.get(f"{api_url}/v1/experiments/{experiment}", timeout=10).json()
    a, b = report["variants"]
    new_users = sum(v == "new" for v in variants.values())
    assert b["users"] == new_users and a["users"] == len(USERS) - new_users
    assert b["impressions"] == 5 * new_users and b["clicks"] == 2 * new_users and a["clicks"] == 0
    assert b["ctr"]["value"] == pytest.approx(0.4) and a["ctr"]["value"] == 0
    assert b["vs_control"]["ctr"]["significant"] and b["vs_control"]["ctr"]["difference"] == pytest.approx(0.4)
    assert report["leader"] == {
        "variant": "new",
        "model": versions[1],
        "significant": True,
        "always_valid_significant": True,
    }
    assert report["series"]["points"][-1]["new"] == {"impressions": 5 * new_users, "clicks": 2 * new_users}
    metrics = requests.get(f"{api_url}/metrics", timeout=10).text
    labels = f'experiment="{experiment}",tenant="default",variant="new"'
    assert f"movierec_experiment_ctr{{{labels}}} 0.4" in metrics
    clicks = f'experiment="{experiment}",tenant="default",type="click",variant="new"'
    assert f"movierec_experiment_events_total{{{clicks}}} {2 * new_users}.0" in metrics

    # Paused: users are answered by the active model again, naming no experiment; resumed, by their variant.
    assert requests.post(f"{api_url}/v1/experiments/{experiment}/pause", timeout=10).json()["state"] == "paused"
    user_b = next(u for u, v in variants.items() if v == "new")
    paused = recommend(api_url, {"user_id": user_b, "k": 5})
    assert "experiment" not in paused and paused["model"] == versions[0]
    assert requests.post(f"{api_url}/v1/experiments/{experiment}/pause", timeout=10).status_code == 409
    assert requests.post(f"{api_url}/v1/experiments/{experiment}/resume", timeout=10).json()["state"] == "running"
    assert recommend(api_url, {"user_id": user_b, "k": 5})["model"] == versions[1]

    promoted = requests.post(f"{api_url}/v1/experiments/{experiment}/promote", timeout=10).json()
    assert promoted["state"] == "ended" and promoted["promoted"]["model"] == versions[1]
    assert requests.get(f"{api_url}/v1/models", timeout=10).json()["active"] == versions[1]
    assert "experiment" not in recommend(api_url, {"user_id": 1, "k": 5})
    assert requests.post(f"{api_url}/v1/experiments/{experiment}/resume", timeout=10).status_code == 409

    # Made again with its seed, the experiment puts every user where it did.
    assert requests.delete(f"{api_url}/v1/experiments/{experiment}", timeout=10).status_code == 200
    assert requests.post(f"{api_url}/v1/experiments", json=body, timeout=10).status_code == 201
    for user in list(USERS)[:10]:
        assert recommend(api_url, {"user_id": user, "k": 5})["experiment"]["variant"] == variants[user]


def test_an_interleaving_drafts_both_models_answers_and_credits_each_click_to_its_team(
    api_url: str, versions: list[str], experiment: str
) -> None:
    own: list[dict[int, list[int]]] = [{}, {}]
    for side, version in enumerate(versions):  # each model's own answers, while it is the active one
        assert requests.post(f"{api_url}/v1/models/{version}/activate", timeout=10).status_code == 200
        for user in USERS:
            own[side][user] = [i["movie_id"] for i in recommend(api_url, {"user_id": user, "k": 10})["items"]]
    body = {"name": experiment, "kind": "interleave", "variants": [{"model": versions[0]}, {"model": versions[1]}]}
    assert requests.post(f"{api_url}/v1/experiments", json=body, timeout=10).status_code == 201

    # Each user clicks the first item the first model did not answer: the second's pick, credited to its team.
    events = []
    for user in USERS:
        answer = recommend(api_url, {"user_id": user, "k": 10})
        assert answer["experiment"] == {"name": experiment, "variant": "interleaved"}
        ids = [i["movie_id"] for i in answer["items"]]
        a, b = own[0][user], own[1][user]
        assert len(set(ids)) == 10 and set(ids) <= set(a) | set(b)
        assert a[0] in ids[:2] and b[0] in ids[:2]  # the first round: each team's best
        again = recommend(api_url, {"user_id": user, "k": 10})
        assert [i["movie_id"] for i in again["items"]] == ids  # a user's coins are their own: drafted alike
        events += shown(answer, user)
        events += [{"type": "click", "user_id": user, "movie_id": m, "recommendation_id": answer["recommendation_id"]}
                   for m in [m for m in ids if m not in a][:1]]  # fmt: skip
    assert post_events(api_url, events)["credited"] == len(events)
    report = requests.get(f"{api_url}/v1/experiments/{experiment}", timeout=10).json()
    outcome = report["interleaving"]
    clicked = sum(e["type"] == "click" for e in events)
    assert clicked > 10 and outcome["wins_b"] == clicked and outcome["wins_a"] == 0 and outcome["significant"]
    assert outcome["preferred"] == {"variant": "B", "model": versions[1], "significant": True,
                                    "always_valid_significant": True}  # fmt: skip
    assert report["totals"]["impressions"] == 10 * len(USERS) and report["totals"]["clicks"] == clicked
    assert report["series"]["points"][-1]["clicks"] == {"A": 0, "B": clicked}


def test_a_feedback_rating_citing_an_answer_counts_as_liked_for_its_variant(
    api_url: str, versions: list[str], experiment: str
) -> None:
    body = {"name": experiment, "variants": [{"model": versions[0], "share": 1}, {"model": versions[1], "share": 1}]}
    assert requests.post(f"{api_url}/v1/experiments", json=body, timeout=10).status_code == 201
    user = 610_001  # a user no dataset knows: the most popular movies, from their variant's model
    answer = recommend(api_url, {"user_id": user, "k": 5})
    movie = answer["items"][1]["movie_id"]
    dataset = requests.get(f"{api_url}/v1/models", timeout=10).json()["models"][0]["dataset"]
    rating = {"user_id": user, "movie_id": movie, "rating": 4.5, "recommendation_id": answer["recommendation_id"]}
    r = requests.post(f"{api_url}/v1/datasets/{dataset}/ratings", json={"ratings": [rating]}, timeout=30)
    assert r.status_code == 200, r.text
    bad = {**rating, "user_id": user + 1}
    r = requests.post(f"{api_url}/v1/datasets/{dataset}/ratings", json={"ratings": [rating, bad]}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["details"]["rows"][0]["row"] == 1
    report = requests.get(f"{api_url}/v1/experiments/{experiment}", timeout=10).json()
    assert "variants" in report, report
    variant = next(v for v in report["variants"] if v["name"] == answer["experiment"]["variant"])
    assert variant["liked"] == 1 and variant["ratings"] == 1
    requests.delete(f"{api_url}/v1/datasets/{dataset}/ratings", timeout=10)
