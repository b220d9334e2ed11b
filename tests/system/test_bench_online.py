"""bench/online.py, the replay of held-out users through experiments (issue #27): its hold-out in this process, and
the whole benchmark at tiny settings as a user runs it (``python -m bench.online``, a stack of its own on an
embedded Redis), on a small generated MovieLens directory (cli/synth.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from bench.online import events_of, hold_out
from cli.synth import SynthSpec, write_synthetic
from tests.helpers import REPO

SYNTH = SynthSpec(movies=300, users=60, ratings=4000, seed=5, taste=True)
"""Users with tastes (``taste``), so that a model trained on their early ratings finds some of their later ones."""


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("movielens")
    write_synthetic(out, SYNTH)
    return out


def test_the_hold_out_keeps_each_users_first_80_percent_and_no_later_tag(synthetic: Path, tmp_path: Path) -> None:
    held = hold_out(synthetic, tmp_path / "train")
    source = pd.read_csv(synthetic / "ratings.csv")
    train = pd.read_csv(tmp_path / "train" / "ratings.csv")
    assert len(train) == held.train_ratings and held.train_ratings + held.held_out_ratings == len(source)
    for user, mine in source.groupby("userId"):
        kept = train[train["userId"] == user]
        later = held.later.get(int(user), {})
        if len(mine) < 10:  # too few to evaluate: trained on whole, nothing held out
            assert len(kept) == len(mine) and not later
            continue
        assert len(kept) == round(0.8 * len(mine)) and len(later) == len(mine) - len(kept) >= 2
        assert kept["timestamp"].max() <= min(mine[mine["movieId"].isin(later)]["timestamp"])
        assert set(kept["movieId"]).isdisjoint(later)
    # A held-out user's tags from their cut (their first held-out rating's time) on are gone; the rest are kept.
    held_rows = [m in held.later.get(u, {}) for u, m in zip(source["userId"], source["movieId"], strict=True)]
    cut = source[held_rows].groupby("userId")["timestamp"].min()
    tags, all_tags = pd.read_csv(tmp_path / "train" / "tags.csv"), pd.read_csv(synthetic / "tags.csv")
    late = all_tags["timestamp"] >= all_tags["userId"].map(cut).fillna(np.inf)
    assert len(tags) == int((~late).sum()) and late.any()
    assert (tmp_path / "train" / "movies.csv").read_bytes().count(b"\n") >= SYNTH.movies
    # The evaluated users are those with a liked (>= 4) later rating, each of them in the split's relevant rows.
    liked = {u for u, r in held.later.items() if any(v >= 4 for v in r.values())}
    assert set(held.split.user_ids[held.split.evaluated].tolist()) == liked
    assert np.all(np.diff(held.movie_ids) > 0)


def test_the_replay_runs_both_experiments_end_to_end(synthetic: Path, tmp_path: Path) -> None:
    out = tmp_path / "online.json"
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL" and not k.startswith("MOVIEREC_")}
    # A fixed default recipe: auto's validation grid is bench.quality's to test, and would double this test's time.
    args = ["--data", str(synthetic), "--users", "30", "--check-every", "10", "--repeats", "1", "--k", "5",
            "--default", "hybrid", "--json", str(out)]  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "bench.online", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=240, check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    report: dict[str, Any] = json.loads(out.read_text())

    models = report["models"]
    assert list(models) == ["seed", "default"]
    assert (
        models["seed"]["recipe"] == "seed" and models["default"]["recipe"] == models["default"]["trained"] == "hybrid"
    )
    assert models["seed"]["version"] != models["default"]["version"]
    for model in models.values():
        assert 0 <= model["offline"]["ndcg"] <= 1 and model["offline"]["users"] > 0

    assert [(r["kind"], r["name"]) for r in report["runs"]] == [("ab", "ab-1"), ("interleave", "interleave-1")]
    for run in report["runs"]:
        # Every event posted was credited to the experiment, and the report was read at every check.
        assert run["events"]["credited"] == run["events"]["posted"] >= 5 * run["users"] > 0
        users = [c["users"] for c in run["checks"]]
        assert users == sorted({*range(10, run["users"] + 1, 10), run["users"]})
        assert all(0 <= c["p_value"] <= 1 for c in run["checks"])
        stop = run["stopped"]
        assert stop is None or (run["first_significant"] is not None and run["first_significant"] <= stop)
        outcome = run["outcome"]
        assert outcome["p_value"] == run["checks"][-1]["p_value"]
        assert outcome["winner"] in (None, "seed", "default")
    ab, interleave = (r["outcome"] for r in report["runs"])
    assert set(ab["ctr"]) == {"seed", "default"} and sum(ab["users"].values()) == report["runs"][0]["users"]
    assert ab["difference"] == pytest.approx(ab["ctr"]["default"] - ab["ctr"]["seed"], abs=1e-5)
    assert ab["low"] <= ab["difference"] <= ab["high"]
    assert set(interleave["wins"]) == {"seed", "default"} and -1 <= interleave["preference"] <= 1
    assert sum(interleave["wins"].values()) + interleave["ties"] > 0  # somebody clicked
    assert set(report["summary"]) >= {"ab", "interleave", "ratio_first_significant", "ratio_stopped"}
    assert "kind       run users" in done.stdout and "# wall time:" in done.stdout


class Scripted:
    """An rng whose every draw is ``value``."""

    def __init__(self, value: float) -> None:
        self.value = value

    def random(self) -> float:
        return self.value


def test_the_click_models() -> None:
    answer = {"recommendation_id": "r1.x", "items": [{"movie_id": m} for m in (10, 20, 30)]}
    later = {20: 4.5, 30: 2.0}

    def clicked(**how: Any) -> list[int]:
        return [e["movie_id"] for e in events_of(answer, 7, later, **how) if e["type"] == "click"]

    assert clicked() == [20]  # every liked movie shown, wherever
    assert clicked(clicks="position", rng=Scripted(0.0)) == [10, 20, 30]  # all looked at; noise clicks too
    assert clicked(clicks="position", rng=Scripted(0.5)) == [20]  # looked at 1, 2 (1/log2(4) = 0.5 is not < 0.5)
    assert clicked(clicks="position", rng=Scripted(0.95)) == []  # nothing clicked
    ratings = [e for e in events_of(answer, 7, later, clicks="position", rng=Scripted(0.95)) if e["type"] == "rating"]
    assert [(e["movie_id"], e["rating"]) for e in ratings] == [(20, 4.5), (30, 2.0)]  # ratings whatever is clicked
