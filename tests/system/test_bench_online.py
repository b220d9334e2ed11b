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

from bench.online import (
    POWER_SIZES,
    Outcomes,
    events_of,
    hold_out,
    null_of,
    peeking,
    power_curve,
    projected_users,
)
from cli.synth import SynthSpec, write_synthetic
from shared.logic.online import AB, INTERLEAVE
from shared.ml.online import ratio
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
            "--default", "hybrid", "--power-draws", "20", "--peek-draws", "5", "--json", str(out)]  # fmt: skip
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
    # The power curves: one experiment of each kind over all 30 users, then fixed-size experiments drawn from it.
    for kind in ("ab", "interleave"):
        power = report["power"][kind]
        assert [c["users"] for c in power["curve"]] == list(POWER_SIZES)
        assert all(0 <= c["power"] <= 1 for c in power["curve"])
        at = power["users_at_power"]
        assert at is None or next(c["power"] for c in power["curve"] if c["users"] == at) >= 0.8
        assert power["projected"] is None or power["projected"] > 0
        (peek,) = power["peeking"]
        for rule in ("fixed", "always_valid"):
            assert 0 <= peek[rule]["false_positive"] <= 1 and 0 <= peek[rule]["wrong_side"] <= 1
    assert "kind       run users" in done.stdout and "# wall time:" in done.stdout
    assert "# power over 20 fixed-size experiments" in done.stdout


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


def test_power_of_fixed_size_experiments() -> None:
    # An interleaving where every user clicks and prefers b: the sign test is significant from 6 users on (2 / 2**6
    # < 0.05), so every drawn experiment of 10 or more finds it; the projection is the binomial's for a share of 1.
    users = 40
    always_b = Outcomes(INTERLEAVE, np.zeros(users), np.ones(users), np.zeros(users))
    curve = power_curve(always_b, draws=20, seed=0, sizes=(5, 10, 20))
    assert [c["power"] for c in curve["curve"]] == [0.0, 1.0, 1.0] and curve["users_at_power"] == 10
    assert curve["effect"] == 1.0
    assert projected_users(always_b) == pytest.approx((1.959964 * 0.5 / 0.5) ** 2, rel=1e-5)
    # No user with a preference: no effect, so nothing to project, and no draw is significant.
    indifferent = Outcomes(INTERLEAVE, np.ones(users), np.ones(users), np.zeros(users))
    assert projected_users(indifferent) is None
    assert power_curve(indifferent, draws=10, seed=0, sizes=(20,))["curve"][0]["power"] == 0.0
    # An A/B test whose sides click at 0.1 and 0.3 of 10 impressions a user with a spread: the normal
    # approximation n = N ((z_0.975 + z_0.8) / z_N)^2, z_N the difference over its clustered standard error.
    rng = np.random.default_rng(1)
    variant = np.repeat([0, 1], 100)
    clicks = rng.binomial(10, np.where(variant == 1, 0.3, 0.1)).astype(float)
    ab = Outcomes(AB, variant, np.full(200, 10.0), clicks)
    a, b = ratio(clicks[:100], np.full(100, 10.0)), ratio(clicks[100:], np.full(100, 10.0))
    z = (b.value - a.value) / np.hypot(a.se, b.se)
    assert projected_users(ab) == pytest.approx(200 * ((1.959964 + 0.841621) / z) ** 2, rel=1e-5)
    # With 200 users and a z this large every drawn experiment of 100 finds it, in b's direction.
    assert z > 5 and power_curve(ab, draws=20, seed=0, sizes=(100,))["curve"][0]["power"] == 1.0


def test_peeking_stops_at_the_first_significant_read_and_nulls_keep_each_users_outcomes() -> None:
    # Every user prefers b: the sign test is significant from 6 deciding users, the always-valid one from 8
    # (2^8 / 9 = 28.4 >= 20; 2^7 / 8 = 16 is not), so read every 5 users both stop at the second read, at 10.
    users = 40
    always_b = Outcomes(INTERLEAVE, np.zeros(users), np.ones(users), np.zeros(users))
    found = peeking(always_b, draws=5, check_every=5, seed=0)
    for rule in ("fixed", "always_valid"):
        assert found[rule]["users_to_stop"]["median"] == 10 and found[rule]["wrong_side"] == 0
    rng = np.random.default_rng(0)
    swapped = null_of(always_b, rng)  # each user's two credits, in either order
    assert sorted(zip(swapped.first, swapped.second, strict=True)) != [(0.0, 1.0)] * users
    assert all({a, b} == {0.0, 1.0} for a, b in zip(swapped.first, swapped.second, strict=True))
    ab = Outcomes(AB, np.repeat([0, 1], 20), np.arange(40.0), np.arange(40.0) / 2)
    dealt = null_of(ab, rng)  # the same users, each dealt to a variant by a coin
    assert set(dealt.first) == {0, 1} and (dealt.second == ab.second).all() and (dealt.third == ab.third).all()
