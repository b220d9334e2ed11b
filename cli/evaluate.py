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
           ("coverage", "cov@{k}", 7, 4), ("cold_recall", "cold rec", 8, 4), ("cold_share", "cold%", 6, 4))  # fmt: skip
"""(field, header, width, decimals) of each metric column."""


def format_table(table: dict[str, Any]) -> str:
    """The evaluation's table as text: one line per row (its metrics, its lead over the reference baseline with
    the 95 % interval, NDCG on each new-user slice), the protocol above, what was tuned and the verdict below."""
    p = table["protocol"]
    k = p["k"]
    split = (
        f"global split at one time (the last {1 - p['train_fraction']:.0%} of all ratings are the test period)"
        if p.get("split") == "global"
        else f"per-user temporal split (the first {p['train_fraction']:.0%} of each user's ratings by time train)"
    )
    held = f", {p['new_user_share']:.0%} of users held out as new users" if p.get("new_user_share") else ""
    sampled = " (a hashed sample)" if p.get("max_evaluated") else ""
    lines = [
        f"evaluation of {table['dataset']} (trained on {table['training_dataset']}): {table['users']:,} users "
        f"evaluated{sampled}; {split}, users with >= {p['min_ratings']} ratings{held}, relevant = test rating >= "
        f"{p['relevant_at']}, top {k}, seed {p['seed']}"
    ]
    slices = sorted(table.get("new_users", {}), key=int)
    reference = next((r["name"] for r in table["rows"] if r["family"] == table.get("reference")), None)
    width = max([11, *(len(r["name"]) for r in table["rows"])])
    header = f"{'recommender':<{width}} {'kind':<8} " + " ".join(f"{h.format(k=k):>{w}}" for _, h, w, _ in METRICS)
    if reference:
        header += f" {'dNDCG vs ref [95% CI]':>26}"
    header += "".join(f" {'new@' + n:>7}" for n in slices)
    header += f" {'seconds':>8}"
    lines += [header, "-" * len(header)]
    for row in table["rows"]:
        start = f"{row['name']:<{width}} {row['kind']:<8} "
        if row["skipped"]:
            lines.append(f"{start}skipped: {row['skipped']}")
            continue
        cells = " ".join(f"{row[f]:>{w}.{d}f}" for f, _, w, d in METRICS)
        if reference:
            iv = row.get("vs_reference", {}).get("all", {}).get("ndcg")
            lead = f"{iv['difference']:+.4f} [{iv['low']:+.4f}, {iv['high']:+.4f}]" if iv else "reference"
            cells += f" {lead:>26}"
        for n in slices:
            got = (row.get("new_users") or {}).get(f"new-{n}")
            cells += f" {got['ndcg']:>7.4f}" if got else f" {'-':>7}"
        lines.append(f"{start}{cells} {row['seconds']:>8.1f}")
    lines += _notes(table, slices, reference)
    return "\n".join(lines)


def _notes(table: dict[str, Any], slices: list[str], reference: str | None) -> list[str]:
    """The lines under the table: what the columns mean, what each row was tuned over, the verdict."""
    p, k = table["protocol"], table["protocol"]["k"]
    lines: list[str] = []
    lines.append(
        f"# cold rec: recall over the {table['cold_users']:,} users with a relevant test movie nobody rated in "
        "the training part; cold%: the share of answer slots holding such a movie"
    )
    lines.append("# seconds: fitting and scoring (a recipe: its pipeline too), summed over shards")
    if slices:
        counts = ", ".join(f"{table['new_users'][n]:,} at {n}" for n in slices)
        lines.append(f"# new@N: NDCG@{k} of held-out users given their first N ratings, later likes relevant "
                     f"(users with one: {counts})")  # fmt: skip
    if reference:
        lines.append(f"# dNDCG: paired bootstrap over users of each row's NDCG@{k} minus {reference}'s")
    for row in table["rows"]:
        tuning = row.get("tuning")
        if tuning and tuning["settings"] > 1:
            scored = [v for v in tuning["grid"].values() if v is not None]
            if not scored:  # skipped at every setting (EASE over its memory budget): the row says why
                lines.append(f"# {row['family']}: not tuned, skipped at every one of its {tuning['settings']} "
                             "settings on validation")  # fmt: skip
                continue
            cold = tuning.get("cold")
            best = cold["best"] if cold else row["name"]
            lines.append(f"# {row['family']}: tuned over {tuning['settings']} settings on validation, chose "
                         f"{best} (validation objective {max(scored):.4f}: NDCG@{k} over its users and "
                         "new users)")  # fmt: skip
            if cold:
                lines.append(f"# {row['family']}: serves {cold['text']}")
    for note in table.get("notes", []):
        lines.append(f"# {note}")
    if table.get("best"):
        lines.append(f"# default recipe (chosen on validation): {table['best']}")
    if not p.get("tuned"):
        lines.append("# untuned: every row at its default setting, nothing chosen (the tuned table: movierec "
                     "evaluate, or POST /v1/jobs/evaluate without \"tune\": false)")  # fmt: skip
    if table.get("verdict"):
        lines.append(f"# {table['verdict']}")
    return lines


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
        client = Client(stack.api_url, api_key=stack.settings.client_key)
        return show(client, {**body, "path": path.name})
