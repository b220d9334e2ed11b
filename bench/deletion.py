"""What deleting a dataset frees: Redis keys and bytes before a pipeline, after it, and after the DELETE.

    python -m bench.deletion [--data DIR]

A fresh ``movierec up`` stack on an empty embedded Redis; a pipeline, then 1,000 feedback ratings (100 new users)
posted to its dataset, then the DELETE. Measured at each point: the number of keys under the
stack's prefix and the sum of their ``MEMORY USAGE`` (so Redis's own overhead does not blur it), split into
what a dataset owns (its record, arrays, triplets, embeddings, models and their artifacts, its feedback) and the rest
(job records, which expire after the result TTL, and the string-vector cache, shared by every dataset
encoded with the same model, by design). The pipeline runs with ``activate: false``: the active model's
dataset cannot be deleted (409), and there is nothing else to activate on an empty Redis.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import redis
import requests

from shared.infra.keys import Keys
from shared.infra.settings import Settings

from .common import fresh_stack, machine, wait_job

REPO = Path(__file__).resolve().parents[1]
SMALL = REPO.parent / "shared" / "data" / "ml-latest-small"
PREFIX = "bench-deletion"
DATASET_HEADS = ("dataset", "datasets", "model", "models", "art", "feedback")
"""Key kinds a dataset owns (the second part of ``<prefix>:<kind>:...``); artifacts of other names are
counted under the rest (none are expected)."""


def footprint(client: redis.Redis) -> dict[str, tuple[int, int]]:
    """{"dataset-owned" | "jobs" | "vector cache" | "other": (keys, bytes)} under PREFIX."""
    out: dict[str, list[int]] = {}
    for key in client.scan_iter(match=Keys(PREFIX).everything, count=1000):
        kind = key.decode().split(":")[1] if b":" in key else ""
        group = (
            "dataset-owned" if kind in DATASET_HEADS else "jobs" if kind.startswith("job") else
            "vector cache" if kind.startswith("vec") else "other"
        )  # fmt: skip
        size = int(client.memory_usage(key) or 0)
        entry = out.setdefault(group, [0, 0])
        entry[0] += 1
        entry[1] += size
    return {k: (v[0], v[1]) for k, v in sorted(out.items())}


def show(label: str, fp: dict[str, tuple[int, int]]) -> None:
    parts = ", ".join(f"{group} {keys:,} keys / {size / 2**20:.2f} MiB" for group, (keys, size) in fp.items())
    print(f"{label:<28} {parts or 'empty'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--data", type=Path, default=SMALL, help="a MovieLens directory")
    args = parser.parse_args()
    data = args.data.resolve()
    print(machine())
    settings = Settings(data_root=data.parent, key_prefix=PREFIX)
    with tempfile.TemporaryDirectory(prefix="movierec-deletion-") as run_dir, \
            fresh_stack(settings, Path(run_dir)) as stack:  # fmt: skip
        client = redis.Redis.from_url(stack.settings.redis_url)
        show("before", footprint(client))
        r = requests.post(
            f"{stack.api_url}/v1/pipelines", json={"path": data.name, "activate": False, "recipe": "hybrid"}, timeout=30
        )
        job = wait_job(stack.api_url, r.json()["id"])
        if job["status"] != "succeeded":
            print(f"pipeline {job['status']}: {job.get('error')}", file=sys.stderr)
            return 1
        dataset = requests.get(f"{stack.api_url}{job['result_url']}", timeout=30).json()["dataset"]
        show("after the pipeline", footprint(client))
        movies = requests.get(f"{stack.api_url}/v1/datasets/{dataset}/movies?limit=1000", timeout=30).json()
        feedback = [{"user_id": 10_000 + i // 10, "movie_id": m["movie_id"], "rating": 4.0}
                    for i, m in enumerate(movies["movies"])]  # fmt: skip
        r = requests.post(f"{stack.api_url}/v1/datasets/{dataset}/ratings", json={"ratings": feedback}, timeout=30)
        if r.status_code != 200:
            print(f"feedback refused: {r.status_code} {r.text[:300]}", file=sys.stderr)
            return 1
        show(f"after {len(feedback):,} feedback ratings", footprint(client))
        answer = requests.delete(f"{stack.api_url}/v1/datasets/{dataset}", timeout=60)
        print(f"DELETE /v1/datasets/{dataset}: {answer.status_code} {answer.json()}")
        show("after the DELETE", footprint(client))
    return 0


if __name__ == "__main__":
    sys.exit(main())
