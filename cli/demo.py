"""``movierec demo``: the embedded stack, the pipeline on a MovieLens directory, the evaluation table (every
recipe against the baselines), recommendations printed.

Where the data comes from, first that applies: ``--data``; ``MOVIEREC_DEMO_DATA``; ml-latest-small cached
under the demo's data dir (downloaded once from ``MOVIEREC_DEMO_URL`` and checked as a zip holding the
expected files); else, offline, a generated MovieLens-format sample, and the demo says so.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cli.client import ApiError, Client
from cli.evaluate import evaluate_with, format_table
from cli.stack import Stack
from cli.synth import SynthSpec, write_synthetic
from shared.infra.settings import Settings
from shared.ml.recipes import AUTO_RECIPES

DEMO_URL = "https://files.grouplens.org/datasets/movielens/ml-latest-small.zip"
DOWNLOAD_TIMEOUT_S = 20.0
EXPECTED_FILES = ("movies.csv", "ratings.csv", "tags.csv", "links.csv")
OFFLINE_SAMPLE = SynthSpec(movies=3000, users=300, ratings=40_000, seed=7)


@dataclass(frozen=True)
class DemoData:
    path: Path
    origin: str


def _download_small(url: str, cache: Path) -> Path:
    target = cache / "ml-latest-small"
    if all((target / f).is_file() for f in EXPECTED_FILES):
        return target
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"the download URL must be http(s), not {url!r}")
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        archive = Path(tmp) / "ml.zip"
        with (
            urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response,  # noqa: S310 - http(s) checked
            archive.open("wb") as f,
        ):
            shutil.copyfileobj(response, f)
        with zipfile.ZipFile(archive) as z:
            names = set(z.namelist())
            missing = [f for f in EXPECTED_FILES if f"ml-latest-small/{f}" not in names]
            if missing:
                raise ValueError(f"the archive lacks {', '.join(missing)}")
            for name in (f"ml-latest-small/{f}" for f in (*EXPECTED_FILES, "README.txt")):
                if name in names:
                    z.extract(name, tmp)
        shutil.rmtree(target, ignore_errors=True)
        (Path(tmp) / "ml-latest-small").rename(target)
    return target


def find_demo_data(explicit: Path | None, *, cache: Path) -> DemoData:
    if explicit is not None:
        return DemoData(explicit, "--data")
    if os.environ.get("MOVIEREC_DEMO_DATA"):
        return DemoData(Path(os.environ["MOVIEREC_DEMO_DATA"]), "MOVIEREC_DEMO_DATA")
    url = os.environ.get("MOVIEREC_DEMO_URL", DEMO_URL)
    try:
        return DemoData(_download_small(url, cache), f"ml-latest-small (cached from {url})")
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        print(f"movierec demo: could not fetch ml-latest-small ({exc}); generating a sample", file=sys.stderr)
    sample = cache / "synthetic-sample"
    if not (sample / "ratings.csv").is_file():
        write_synthetic(sample, OFFLINE_SAMPLE)
    return DemoData(sample, "a generated sample (offline: no MovieLens data found or downloadable)")


def run_demo(
    settings: Settings,
    *,
    data: Path | None,
    data_dir: Path,
    embedded_redis: bool,
    cpu_workers: int,
    interactive_workers: int = 1,
    serve: bool = False,
    port: int | None = None,
) -> int:
    """Run the demo; with ``serve``, keep the stack up afterwards (supervised, as ``movierec up`` does) until
    SIGINT/SIGTERM, so the dashboard stays open on what the demo built."""
    demo_data = find_demo_data(data, cache=data_dir / "cache")
    path = demo_data.path.resolve()
    if not (path / "movies.csv").is_file():
        print(f"movierec demo: {path} holds no movies.csv", file=sys.stderr)
        return 2
    print(f"data: {path} ({demo_data.origin})")
    settings = settings.model_copy(update={"data_root": path.parent})
    stack = Stack(
        settings,
        data_dir=data_dir,
        port=port,
        cpu_workers=cpu_workers,
        interactive_workers=interactive_workers,
        embedded_redis=embedded_redis,
        log_dir=data_dir / "logs",
    )
    print("starting Redis, the API and the workers ...", flush=True)
    with stack:  # started and ready, or stopped with its logs' tails printed
        try:
            print(f"API at {stack.api_url} (logs in {data_dir / 'logs'})", flush=True)
            print(f"dashboard at {stack.api_url}/ui/", flush=True)
            client = Client(stack.api_url, api_key=stack.settings.client_key)
            print(
                "running the pipeline: ingest, choose the recipe on a validation split (recipe auto), mine, "
                "encode, train, index, activate",
                flush=True,
            )
            job = client.submit_pipeline(path=path.name)
            final = client.wait(job["id"])
            if final["status"] != "succeeded":
                error = final.get("error") or {}
                print(f"pipeline {final['status']}: {error.get('message', '')}", file=sys.stderr)
                return 1
            pipeline = client.result(job["id"])
            print_dataset(client.dataset(pipeline["dataset"]))
            print_metrics(pipeline)
            print(
                f"\nevaluating the recipes {', '.join(DEMO_RECIPES)} against the baselines at their default settings "
                "(each user's ratings split by time; `movierec evaluate` tunes every row on validation first, and "
                "adds `sequence`, whose CPU training takes minutes) ...",
                flush=True,
            )
            try:
                table = evaluate_with(client, {"dataset": pipeline["dataset"], "tune": False,
                                               "recipes": list(DEMO_RECIPES)})  # fmt: skip
            except ApiError as exc:
                print(f"evaluation failed: {exc.message}", file=sys.stderr)
                return 1
            print(f"\n{format_table(table)}")
            for user in DEMO_USERS:
                try:
                    print_recommendations(f"user {user}", client.recommend(user_id=user, k=10))
                except ApiError as exc:
                    print(f"\nrecommendations for user {user}: {exc.message}")
            for keywords in DEMO_KEYWORDS:
                print_recommendations(f"keywords {keywords}", client.recommend(keywords=keywords, k=10))
            if not serve:
                print(f"\nthe stack stops now; `movierec demo --serve` (`make demo SERVE=1`) keeps it up, with the "
                      f"dashboard at {stack.api_url}/ui/")  # fmt: skip
                return 0
            print(f"\ndashboard: {stack.api_url}/ui/ (jobs, models, try it, the map); Ctrl-C stops the stack",
                  flush=True)  # fmt: skip
            return stack.run_until_signalled()
        finally:
            print("stopping ...", flush=True)


DEMO_USERS = (1, 2, 3)
DEMO_RECIPES = ("seed", *AUTO_RECIPES)
"""The recipes the demo's table compares: the notebook's and those ``auto`` chose among (not ``sequence``, whose
CPU training would double the demo's time; ``movierec evaluate`` scores every recipe)."""
DEMO_KEYWORDS = (["Children", "family", "animation"], ["war", "violence", "drama"])


def print_metrics(pipeline: dict[str, Any]) -> None:
    metrics = pipeline["metrics"]
    print(f"\nmodel {pipeline['model']} (active), recipe {pipeline['recipe']}")
    chosen = pipeline.get("chosen") or {}
    if chosen.get("why"):
        print(f"  chosen: {chosen['why']}")
    print(f"  test ROC AUC before training (cosine on encoder vectors)  {metrics['test_auc_before']:.4f}")
    print(f"  test ROC AUC after training (cosine on projections)       {metrics['test_auc_after']:.4f}")
    losses = ", ".join(f"{v:.4f}" for v in metrics["train_losses"])
    print(f"  train loss per epoch: {losses}")


def print_recommendations(title: str, answer: dict[str, Any]) -> None:
    strategy = f" ({answer['strategy']})" if answer.get("strategy") else ""
    experiment = answer.get("experiment")
    if experiment:
        strategy += f", experiment {experiment['name']}: variant {experiment['variant']}"
    print(f"\nrecommendations for {title}{strategy}:")
    for item in answer["items"]:
        print(f"  {item['score']:.3f}  {item['title']}  [{', '.join(item['descriptors'][:6])}]")
    top = ", ".join(f"{d} ({n})" for d, n in answer["top_descriptors"])
    print(f"  top descriptors of these: {top}")
    if answer.get("history_top_descriptors"):
        history = ", ".join(f"{d} ({n})" for d, n in answer["history_top_descriptors"])
        print(f"  top descriptors of the user's history: {history}")
    if answer.get("next_cursor"):
        print(f"  next page: --cursor {answer['next_cursor']}")
    if answer.get("recommendation_id"):
        print(f"  recommendation id (cite it in POST /v1/events): {answer['recommendation_id']}")


def print_dataset(record: dict[str, object]) -> None:
    counts = record["counts"]
    ingest = record.get("ingest") or {}
    assert isinstance(counts, dict) and isinstance(ingest, dict)
    reused = " (already ingested: reused)" if record.get("reused") else ""
    print(f"\ndataset {record['id']}{reused}")
    rows = [
        ("movies kept", counts["movies"]),
        ("movies dropped (no descriptor)", counts["dropped"]),
        ("users", counts["users"]),
        ("ratings", counts["ratings"]),
        ("descriptor vocabulary", counts["vocabulary"]),
        ("descriptor strings", counts["descriptors"]),
        ("tags from", record["tag_source"]),
        ("ingest time (s)", ingest.get("seconds")),
        ("ingest peak RSS (MB)", ingest.get("peak_rss_mb")),
    ]
    for label, value in rows:
        shown = f"{value:,}" if isinstance(value, int) else str(value)
        print(f"  {label:<32} {shown}")
