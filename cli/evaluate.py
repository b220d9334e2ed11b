"""``movierec evaluate``: an evaluation job (``POST /v1/jobs/evaluate``) run and printed as a table.

With ``--api`` it is sent to a running API (``--data`` is then a path inside that API's data root, or
``--dataset`` an ingested id); without, it starts the embedded stack as ``movierec demo`` does, with the
directory's parent as the data root. ``format_table`` is also what ``movierec demo`` and ``bench.quality``
print.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from cli.client import ApiError, Client
from cli.stack import Stack
from shared.infra.settings import Settings

METRICS = (("recall", "Recall@{k}", 9, 4), ("ndcg", "NDCG@{k}", 8, 4), ("hr", "HR@{k}", 6, 3),
           ("coverage", "cov@{k}", 7, 4), ("cold_recall", "cold rec", 8, 4))  # fmt: skip
"""(field, header, width, decimals) of each metric column."""


def format_table(table: dict[str, Any]) -> str:
    """The evaluation's table as text: one line per row, the protocol above, what the columns mean below."""
    p = table["protocol"]
    k = p["k"]
    lines = [
        f"evaluation of {table['dataset']} (trained on {table['training_dataset']}): {table['users']:,} users "
        f"evaluated; per-user temporal split, users with >= {p['min_ratings']} ratings, the first "
        f"{p['train_fraction']:.0%} of each user's ratings by time for training, relevant = test rating >= "
        f"{p['relevant_at']}, top {k}, seed {p['seed']}"
    ]
    header = f"{'recommender':<14} {'kind':<8} " + " ".join(f"{h.format(k=k):>{w}}" for _, h, w, _ in METRICS)
    header += f" {'seconds':>8}  model"
    lines += [header, "-" * len(header)]
    for row in table["rows"]:
        start = f"{row['name']:<14} {row['kind']:<8} "
        if row["skipped"]:
            lines.append(f"{start}skipped: {row['skipped']}")
            continue
        cells = " ".join(f"{row[f]:>{w}.{d}f}" for f, _, w, d in METRICS)
        lines.append(f"{start}{cells} {row['seconds']:>8.1f}  {row['model'] or ''}".rstrip())
    lines.append(
        f"# cold rec: recall over the {table['cold_users']:,} users with a relevant test movie nobody rated in "
        "the training part; seconds: fitting and scoring (a recipe: its pipeline too), summed over shards"
    )
    if table.get("best"):
        lines.append(f"# best recipe by NDCG@{k}: {table['best']}")
    return "\n".join(lines)


def evaluate_with(client: Client, body: dict[str, Any], *, progress: bool = True) -> dict[str, Any]:
    """Submit an evaluation, wait for it, answer its table; ApiError when it did not succeed."""
    job = client.submit_evaluation(**body)
    final = client.wait(job["id"], progress=progress)
    if final["status"] != "succeeded":
        error = final.get("error") or {}
        raise ApiError(200, error.get("code", final["status"]), str(error.get("message", final["status"])))
    table: dict[str, Any] = client.result(job["id"])
    return table


def run_evaluate(
    settings: Settings,
    *,
    body: dict[str, Any],
    data: Path | None,
    api: str | None,
    api_key: str | None,
    data_dir: Path,
    embedded_redis: bool,
    cpu_workers: int,
    as_json: bool,
    interactive_workers: int = 1,
) -> int:
    """``movierec evaluate``: print the table (or its JSON); 0 when the job succeeded."""

    def show(client: Client, body: dict[str, Any]) -> int:
        try:
            table = evaluate_with(client, body, progress=not as_json)
        except ApiError as exc:
            print(f"movierec evaluate: {exc}", file=sys.stderr)
            return 1
        print(json.dumps(table, indent=2) if as_json else format_table(table), flush=True)
        return 0

    if api is not None:
        if data is not None:
            body = {**body, "path": str(data)}
        return show(Client(api, api_key=api_key), body)
    if data is None or "dataset" in body:
        print("movierec evaluate: give --data DIR (--dataset goes with --api)", file=sys.stderr)
        return 2
    path = data.resolve()
    if not (path / "ratings.csv").is_file():
        print(f"movierec evaluate: {path} holds no ratings.csv", file=sys.stderr)
        return 2
    settings = settings.model_copy(update={"data_root": path.parent})
    stack = Stack(settings, data_dir=data_dir, cpu_workers=cpu_workers, interactive_workers=interactive_workers,
                  embedded_redis=embedded_redis, log_dir=data_dir / "logs")  # fmt: skip
    print(f"starting Redis, the API and the workers (logs in {data_dir / 'logs'}) ...", file=sys.stderr, flush=True)
    with stack:
        client = Client(stack.api_url, api_key=next(iter(stack.settings.api_keys), None))
        return show(client, {**body, "path": path.name})
