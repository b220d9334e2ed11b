"""Feedback to the next recommendation: how long until a rating posted is in the answer, and what reading
feedback costs a recommendation.

    python -m bench.feedback [--data DIR] [--rounds 200]

A fresh ``movierec up`` stack on an empty embedded Redis (AOF, fsync on every write); a pipeline (the default
recipe) trains and activates a model; then, per round, with one client:

- a new user: ``POST /v1/datasets/<id>/ratings`` three 5-star ratings, then ``POST /v1/recommendations?wait=30``
  for them. Visible when the answer's strategy is ``profile`` (it was ``popular`` before the POST).
- an ingested user: their top 10 asked, the first of them rated (POST), their top 10 asked again. Visible when
  the movie just rated is gone from it (a rated movie is excluded).
- the same user's neighbour id, an ingested user with no feedback, asked once: the baseline of the side by side
  (the same route, the same worker, a user whose feedback read finds nothing).

Latency of a rating to its visibility = the POST's answer time + the next recommendation's; the POST answers
only once the rating is stored, so "visible" counts answers that missed it (expected 0).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

from shared.infra.settings import Settings

from .common import fresh_stack, machine, wait_job

REPO = Path(__file__).resolve().parents[1]
SMALL = REPO.parent / "shared" / "data" / "ml-latest-small"
PREFIX = "bench-feedback"
NEW_USERS_FROM = 5_000_000


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def line(label: str, ms: list[float]) -> str:
    return f"{label:<52} p50 {statistics.median(ms):7.2f} ms   p99 {pct(ms, 0.99):7.2f} ms   n={len(ms)}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--data", type=Path, default=SMALL, help="a MovieLens directory")
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    data = args.data.resolve()
    print(machine("one client, API with its default processes, one CPU worker of 2 processes"))
    settings = Settings(data_root=data.parent, key_prefix=PREFIX)
    with tempfile.TemporaryDirectory(prefix="movierec-feedback-") as run_dir, \
            fresh_stack(settings, Path(run_dir)) as stack:  # fmt: skip
        api = stack.api_url
        r = requests.post(f"{api}/v1/pipelines", json={"path": data.name, "recipe": "hybrid"}, timeout=30)
        job = wait_job(api, r.json()["id"])
        if job["status"] != "succeeded":
            print(f"pipeline {job['status']}: {job.get('error')}", file=sys.stderr)
            return 1
        dataset = requests.get(f"{api}{job['result_url']}", timeout=30).json()["dataset"]
        movies = [m["movie_id"] for m in requests.get(f"{api}/v1/datasets/{dataset}/movies?limit=1000",
                                                      timeout=30).json()["movies"]]  # fmt: skip
        users = requests.get(f"{api}/v1/datasets/{dataset}", timeout=30).json()["counts"]["users"]
        session = requests.Session()

        def timed(method: str, path: str, body: dict[str, Any]) -> tuple[float, dict[str, Any]]:
            started = time.perf_counter()
            answer = session.request(method, f"{api}{path}", json=body, timeout=60)
            ms = (time.perf_counter() - started) * 1000
            if answer.status_code != 200:
                raise RuntimeError(f"{method} {path}: {answer.status_code} {answer.text[:300]}")
            return ms, answer.json()

        def recommend(user: int) -> tuple[float, dict[str, Any]]:
            return timed("POST", "/v1/recommendations?wait=30", {"user_id": user, "k": 10})

        rng = random.Random(0)
        for user in range(1, 21):  # warm the worker processes (model load) before measuring
            recommend(user)
        post_ms, after_post_ms, plain_ms, with_feedback_ms = [], [], [], []
        missed_new = missed_known = 0
        for i in range(args.rounds):
            new_user = NEW_USERS_FROM + i
            rows = [{"user_id": new_user, "movie_id": m, "rating": 5.0} for m in rng.sample(movies, 3)]
            ms_post, _ = timed("POST", f"/v1/datasets/{dataset}/ratings", {"ratings": rows})
            ms_rec, answer = recommend(new_user)
            post_ms.append(ms_post)
            after_post_ms.append(ms_rec)
            missed_new += answer["strategy"] != "profile"

            known = rng.randint(1, users - 1)
            _, before = recommend(known)
            rated = before["items"][0]["movie_id"]
            ms_post, _ = timed("POST", f"/v1/datasets/{dataset}/ratings",
                               {"ratings": [{"user_id": known, "movie_id": rated, "rating": 4.0}]})  # fmt: skip
            ms_rec, after = recommend(known)
            post_ms.append(ms_post)
            after_post_ms.append(ms_rec)
            with_feedback_ms.append(ms_rec)
            missed_known += rated in {item["movie_id"] for item in after["items"]}
            ms_plain, _ = recommend(known + 1 if known + 1 <= users else known - 1)
            plain_ms.append(ms_plain)
        visible = [p + r for p, r in zip(post_ms, after_post_ms, strict=True)]
        print(f"dataset {dataset}, {args.rounds} rounds: {2 * args.rounds} ratings posts, each followed by a "
              "recommendation for its user")  # fmt: skip
        print(line("POST /v1/datasets/<id>/ratings (stored, fsynced)", post_ms))
        print(line("the next recommendation for that user", after_post_ms))
        print(line("rating posted -> in a recommendation (sum)", visible))
        print(f"answers that missed the rating just posted: new users {missed_new} of {args.rounds}, ingested "
              f"users {missed_known} of {args.rounds}")  # fmt: skip
        print(line("recommendation, ingested user with feedback", with_feedback_ms))
        print(line("recommendation, ingested user without feedback", plain_ms))
        ratio = statistics.median(with_feedback_ms) / statistics.median(plain_ms)
        print(f"p50 ratio with / without feedback: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
