"""Experiments replayed (issue #27): users from a dataset's held-out part answer an A/B test and an interleaving of
two trained models through the API, and we count how many of them each kind of experiment needed.

    python -m bench.online [--data DIR] [--users 0] [--check-every 5] [--stable 3] [--repeats 20] [--seed 42]
                           [--k 10] [--control seed] [--default auto] [--clicks all|position] [--json out.json]
                           [--cpu-workers 2]

1. **Held out.** ``--data``'s ratings cut as the evaluation cuts them (shared/ml/evaluate.py ``split_ratings``,
   the per-user temporal split: each user with at least 10 ratings keeps the first 80 % by time, so at least two
   are held out); the training part (the other users' ratings too, and tags.csv without the events a user wrote
   at or after their cut) is written as a MovieLens directory under a fresh stack's data root.
2. **Trained** as a user of the API would: ``POST /v1/pipelines`` with ``--control``'s recipe (``seed``, the
   notebook's method, unless told otherwise), then with ``--default``'s (``/v1/pipelines``' own, ``auto``); each
   pipeline ingests, trains, indexes and activates. Offline, each model is activated in turn and every held-out
   user with a liked movie (rated 4 or more) asks it for ``--k`` movies: NDCG@k, recall and hit rate of the
   answers as served, scored by the evaluation's ``metrics``.
3. **Replayed.** Per experiment (``ab``: the two 50/50 by the API's keyed hash; ``interleave``:
   both at once, team draft), the users in a fresh seeded random order; each asks for ``--k`` recommendations
   (``POST /v1/recommendations``), and posts an impression for every movie shown, a click for every shown movie
   their held-out ratings rate 4 or more (``--clicks position``: by a position-based click model, with noise:
   ``CLICK_MODELS``), and a rating event with their held-out rating for every shown movie
   they rated later, each citing the answer (``POST /v1/events``). Every ``--check-every`` users the events are
   posted and the report read (``GET /v1/experiments/<name>``): the p-value and whether the lead is
   significant. An experiment stops once significant at ``--stable`` checks in a row, or when the users run
   out; it is then ended. Each kind runs ``--repeats`` times; the table gives each run's users at first
   significance and at the stop, its metrics there, and their medians and quartiles over the runs.

Answers to users who fall in one variant are the same whatever the other shows, and events change no answer
(the answer path reads none), so a run's users are independent draws. Each experiment is made with a seed
(``--seed`` and the run's number), so its buckets and an interleaving's coins, and so the whole run, replay
alike. Peeking every few users and stopping at significance inflates the false-positive
rate of a fixed-size test; ``--stable`` checks in a row guard against a lucky check, not against that, and no
difference of fewer than 20 users a variant counts as significant (shared/ml/online.py ``MIN_UNITS``).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import redis
from scipy.stats import norm

from shared.infra.settings import Settings
from shared.logic.online import AB, INTERLEAVE, LIKED_AT, aligned, per_user
from shared.ml.evaluate import Split, metrics, split_ratings
from shared.ml.online import ANYTIME_TAU, difference, preference, ratio
from shared.ml.protocol import DEFAULT_MIN_RATINGS, DEFAULT_TRAIN_FRACTION
from shared.ml.recipes import DEFAULT_RECIPE
from shared.ml.splits import TEST
from shared.store.experiments import ExperimentStore

from .common import HTTP, fresh_stack, machine, percentile, train_on

REPO = Path(__file__).resolve().parents[1]
SMALL = REPO.parent / "shared" / "data" / "ml-latest-small"
PREFIX = "bench-online"
TRAIN_DIR = "train"
"""The training part's directory under the stack's data root."""
CHECK_EVERY = 5
"""Users replayed between two reads of the report."""
STABLE = 3
"""Significant at this many checks in a row stops an experiment."""
REPEATS = 20
"""Runs of each kind. A run takes seconds beside the two pipelines, and an A/B test's users to significance vary
by several times from one split of the users to the next."""
EVENTS_PER_POST = 1000
"""POST /v1/events takes at most this many events a request."""
CONTROL = "seed"
"""The recipe the default is compared with: the notebook's method."""
DEFAULT_NAME = "default"
"""The second variant's name; the first is named after its recipe (an interleaving's team a)."""
KIND_LABEL = {AB: "A/B", INTERLEAVE: "interleave"}


@dataclass(frozen=True)
class HeldOut:
    """The split a replay runs on: what was trained on, and what each user rated later."""

    split: Split  # the training part, and each evaluated user's held-out liked movies (columns: movie_ids)
    movie_ids: np.ndarray  # (n,) ascending: the movie id of each column of ``split``
    later: dict[int, dict[int, float]]  # each held-out user's later ratings: movie id -> rating
    train_ratings: int
    held_out_ratings: int


def hold_out(source: Path, target: Path, *, train_fraction: float = DEFAULT_TRAIN_FRACTION) -> HeldOut:
    """Cut ``source``'s ratings by the evaluation's per-user temporal split and write the training part to
    ``target`` as a MovieLens directory (movies.csv and links.csv copied, tags.csv without the events a held-out
    user wrote at or after their cut: their later tags would leak into the descriptors)."""
    ratings = pd.read_csv(source / "ratings.csv", dtype={"userId": np.int64, "movieId": np.int64,
                                                         "rating": np.float32, "timestamp": np.int64})  # fmt: skip
    movies = pd.read_csv(source / "movies.csv", dtype=str, keep_default_na=False)
    movie_ids = np.union1d(movies["movieId"].astype(np.int64).to_numpy(), ratings["movieId"].to_numpy())
    user, movie = ratings["userId"].to_numpy(), ratings["movieId"].to_numpy()
    rating, timestamp = ratings["rating"].to_numpy(), ratings["timestamp"].to_numpy()
    split, _, parts = split_ratings(user, np.searchsorted(movie_ids, movie), rating, timestamp,
                                    n_movies=len(movie_ids), kind="temporal", min_ratings=DEFAULT_MIN_RATINGS,
                                    train_fraction=train_fraction, relevant_at=LIKED_AT)  # fmt: skip
    test = parts.label == TEST
    target.mkdir(parents=True, exist_ok=True)
    ratings[~test].to_csv(target / "ratings.csv", index=False)
    movies.to_csv(target / "movies.csv", index=False)
    if (source / "links.csv").exists():
        (target / "links.csv").write_bytes((source / "links.csv").read_bytes())
    if (source / "tags.csv").exists():
        tags = pd.read_csv(source / "tags.csv", dtype=str, keep_default_na=False)
        cut = pd.Series(parts.cut_times, index=parts.cut_users)
        cut_of = tags["userId"].astype(np.int64).map(cut)
        late = cut_of.notna() & (tags["timestamp"].astype(np.int64) >= cut_of.fillna(0))
        tags[~late.to_numpy()].to_csv(target / "tags.csv", index=False)
    later: dict[int, dict[int, float]] = {}
    for u, m, r in zip(user[test].tolist(), movie[test].tolist(), rating[test].tolist(), strict=True):
        later.setdefault(u, {})[m] = r
    return HeldOut(split=split, movie_ids=movie_ids, later=later, train_ratings=int((~test).sum()),
                   held_out_ratings=int(test.sum()))  # fmt: skip


# -- over HTTP -------------------------------------------------------------------------------------------------
def _call(method: str, url: str, body: dict[str, Any] | None = None, *, ok: int = 200) -> dict[str, Any]:
    r = HTTP.request(method, url, json=body, timeout=60)
    if r.status_code != ok:
        raise RuntimeError(f"{method} {url}: {r.status_code} {r.text[:500]}")
    return dict(r.json())


def recommend(api: str, user: int, k: int) -> dict[str, Any]:
    return _call("POST", f"{api}/v1/recommendations?wait=30", {"user_id": user, "k": k})


def offline(api: str, version: str, held: HeldOut, *, k: int) -> dict[str, float]:
    """``version`` activated, every evaluated user's answer as served, scored against their held-out liked
    movies: NDCG@k, recall@k, HR@k (the evaluation's ``metrics``)."""
    _call("POST", f"{api}/v1/models/{version}/activate")
    split = held.split
    rows = np.full((len(split.evaluated), k), -1, dtype=np.int64)
    for i, user in enumerate(split.user_ids[split.evaluated].tolist()):
        ids = np.array([item["movie_id"] for item in recommend(api, int(user), k)["items"]], dtype=np.int64)
        at = np.searchsorted(held.movie_ids, ids)
        found = (at < len(held.movie_ids)) & (held.movie_ids[np.minimum(at, len(held.movie_ids) - 1)] == ids)
        rows[i, : len(ids)] = np.where(found, at, -1)
    m = metrics(rows, split, k=k)
    return {"ndcg": m["ndcg"], "recall": m["recall"], "hr": m["hr"], "users": m["users"]}


CLICK_MODELS = ("all", "position", "propensity")
"""How a simulated user clicks (``--clicks``): ``all``, every shown movie they liked later, wherever it is shown;
``position``, a position-based model (Craswell et al. 2008's examination hypothesis): the movie at position i is
looked at with probability 1 / log2(i + 1), and a movie looked at is clicked with probability ``LIKED_CLICK`` when
liked later and ``NOISE_CLICK`` when not: real users' position bias and noise; ``propensity``, the same with each
user's own appetite for clicking, both probabilities times a factor drawn once per user (log-normal, median 1,
``PROPENSITY_SIGMA``; capped at 1): the between-user spread a within-user comparison cancels and an A/B test
does not."""
LIKED_CLICK, NOISE_CLICK = 0.9, 0.05
PROPENSITY_SIGMA = 1.0


def events_of(
    answer: dict[str, Any], user: int, later: dict[int, float], *, clicks: str = "all",
    rng: random.Random | None = None,
) -> list[dict[str, Any]]:  # fmt: skip
    """What the user does with an answer: an impression of every movie shown; a click of each they liked (rated
    ``LIKED_AT`` or more later; by ``clicks``' model), and a rating event of each they rated later, with that
    rating."""
    out: list[dict[str, Any]] = []
    draw = rng or random.Random(user)
    appetite = random.Random(f"appetite {user}").lognormvariate(0, PROPENSITY_SIGMA) if clicks == "propensity" else 1
    for position, item in enumerate(answer["items"], start=1):
        cited = {"user_id": user, "movie_id": item["movie_id"], "recommendation_id": answer["recommendation_id"]}
        out.append({"type": "impression", **cited})
        rating = later.get(item["movie_id"])
        liked = rating is not None and rating >= LIKED_AT
        if clicks == "all":
            clicked = liked
        else:
            looked = draw.random() < 1 / math.log2(position + 1)
            clicked = looked and draw.random() < min(1.0, appetite * (LIKED_CLICK if liked else NOISE_CLICK))
        if clicked:
            out.append({"type": "click", **cited})
        if rating is not None:
            out.append({"type": "rating", **cited, "rating": rating})
    return out


def outcome(report: dict[str, Any]) -> dict[str, Any]:
    """An experiment's report cut to what the table shows: A/B, each variant's CTR@k and the second's difference
    from the first; interleaving, wins, ties and preference; both, the p-value, significance and the winner."""
    if report["kind"] == INTERLEAVE:
        x = report["interleaving"]
        preferred = x.get("preferred") or {}
        a, b = (v["name"] for v in report["variants"])
        return {"wins": {a: x["wins_a"], b: x["wins_b"]}, "ties": x["ties"],
                "preference": x["preference"], "p_value": x["p_value"], "significant": x["significant"],
                "winner": preferred.get("variant") if x["significant"] else None}  # fmt: skip
    a, b = report["variants"]
    diff = b["vs_control"]["ctr"]
    return {"ctr": {v["name"]: v["ctr"]["value"] for v in (a, b)}, "users": {v["name"]: v["users"] for v in (a, b)},
            "difference": diff["difference"], "low": diff["low"], "high": diff["high"], "p_value": diff["p_value"],
            "significant": diff["significant"],
            "winner": report["leader"]["variant"] if diff["significant"] else None}  # fmt: skip


@dataclass(frozen=True)
class Replay:
    """How one experiment is replayed."""

    k: int
    check_every: int
    stable: int
    clicks: str = "all"  # CLICK_MODELS


def run_experiment(
    api: str,
    name: str,
    kind: str,
    *,
    variants: dict[str, str],
    users: Sequence[int],
    held: HeldOut,
    how: Replay,
    seed: int,
) -> dict[str, Any]:
    """One experiment of ``variants`` (name -> model version, the control first) over ``users`` in their order,
    stopped at significance or at the last user, and ended; what happened. ``seed``: the experiment's (its
    buckets and an interleaving's coins), so a run replays alike."""
    body = {"name": name, "kind": kind, "k": how.k, "seed": seed,
            "variants": [{"model": v, "name": n} for n, v in variants.items()]}  # fmt: skip
    _call("POST", f"{api}/v1/experiments", body, ok=201)
    started = time.perf_counter()
    pending: list[dict[str, Any]] = []
    posted = credited = 0
    checks: list[dict[str, Any]] = []
    first: int | None = None
    stopped: int | None = None
    streak = 0
    last: dict[str, Any] = {}

    def flush() -> None:
        nonlocal posted, credited
        for lo in range(0, len(pending), EVENTS_PER_POST):
            stored = _call("POST", f"{api}/v1/events", {"events": pending[lo : lo + EVENTS_PER_POST]})
            posted += stored["accepted"]
            credited += stored["credited"]
        pending.clear()

    for n, user in enumerate(users, start=1):
        answer = recommend(api, user, how.k)
        if answer.get("experiment", {}).get("name") != name:
            raise RuntimeError(f"user {user}'s answer names no experiment {name!r}: {answer.get('experiment')}")
        draw = random.Random(f"{seed}-{user}")  # a user's clicks replay alike
        pending.extend(events_of(answer, user, held.later.get(user, {}), clicks=how.clicks, rng=draw))
        if n % how.check_every and n != len(users):
            continue
        flush()
        last = outcome(_call("GET", f"{api}/v1/experiments/{name}"))
        checks.append({"users": n, "p_value": last["p_value"], "significant": last["significant"],
                       **({"variant_users": last["users"]} if "users" in last else {})})  # fmt: skip
        streak = streak + 1 if last["significant"] else 0
        if last["significant"] and first is None:
            first = n
        if streak >= how.stable:
            stopped = n
            break
    _call("POST", f"{api}/v1/experiments/{name}/end")
    return {"name": name, "kind": kind, "users": checks[-1]["users"] if checks else 0, "first_significant": first,
            "stopped": stopped, "outcome": last, "checks": checks, "events": {"posted": posted, "credited": credited},
            "seconds": round(time.perf_counter() - started, 2)}  # fmt: skip


# -- power at a fixed number of users ------------------------------------------------------------------------
POWER_SIZES = (10, 20, 30, 40, 50, 60, 80, 100, 120, 150, 200, 250, 300, 400, 500, 600)
"""Users per experiment at which the power is estimated."""
POWER = 0.8
"""The power a kind of experiment needs: the share of experiments of that many users that find the difference
(significant, in the full replay's direction)."""
POWER_DRAWS = 1000
"""Experiments drawn per size: the power's standard error is at most 0.016."""


@dataclass(frozen=True)
class Outcomes:
    """Every replayed user's counters in one experiment over all of them, as the experiment store kept them (the
    counters GET /v1/experiments reads): an A/B test's variant, impressions@k and clicks@k per user; an
    interleaving's clicks credited to each team per user (0 and 0 for a user who clicked nothing)."""

    kind: str
    first: np.ndarray  # A/B: the variant (0 control, 1 default); interleaving: team a's clicks. (users,)
    second: np.ndarray  # A/B: impressions@k; interleaving: team b's clicks. (users,)
    third: np.ndarray  # A/B: clicks@k; interleaving: unused (zeros). (users,)


def outcomes(settings: Settings, api: str, name: str, users: Sequence[int]) -> Outcomes:
    """The per-user counters of experiment ``name`` (run over ``users``), read from the stack's Redis."""
    record = _call("GET", f"{api}/v1/experiments/{name}")
    store = ExperimentStore(redis.Redis.from_url(settings.redis_url), prefix=settings.key_prefix)
    by_user = per_user(store.counts(int(record["number"]))[1])
    if record["kind"] == INTERLEAVE:
        a, b = aligned(by_user, "t0", "t1", users=users)
        return Outcomes(INTERLEAVE, a, b, np.zeros_like(a))
    variant, shown, clicked = [], [], []
    for v in ("0", "1"):
        arrays = by_user[v]
        variant.append(np.full(len(arrays["_users"]), int(v)))
        shown.append(arrays["i"])
        clicked.append(arrays.get("c", np.zeros_like(arrays["i"])))
    return Outcomes(AB, np.concatenate(variant), np.concatenate(shown), np.concatenate(clicked))


def significant_in(o: Outcomes, rows: np.ndarray) -> tuple[bool, float]:
    """(significant?, signed effect) of an experiment whose users are ``rows`` of ``o``, by the API's own tests
    (shared/ml/online.py): an A/B test's CTR@k difference, with its 20 users a side; an interleaving's sign test."""
    if o.kind == INTERLEAVE:
        p = preference(o.first[rows], o.second[rows])
        return p.significant, p.preference
    v = o.first[rows]
    a, b = rows[v == 0], rows[v == 1]
    d = difference(ratio(o.third[a], o.second[a]), ratio(o.third[b], o.second[b]))
    return d.significant, d.difference


def power_curve(o: Outcomes, *, draws: int, seed: int, sizes: Sequence[int] = POWER_SIZES) -> dict[str, Any]:
    """How often an experiment of n users drawn from the replayed ones (with replacement: users like these, an
    A/B test's split as random as the keyed hash) finds the full replay's difference, significant and in its
    direction, per n of ``sizes``; and the fewest of them with ``POWER``. Fixed-size tests, read once each: no
    peeking, no stopping rule."""
    rng = np.random.default_rng(seed)
    everyone = np.arange(len(o.first))
    _, effect = significant_in(o, everyone)
    direction = float(np.sign(effect))
    curve = []
    for n in sizes:
        found = 0
        for _ in range(draws):
            sig, eff = significant_in(o, rng.integers(0, len(everyone), n))
            found += sig and float(np.sign(eff)) == direction
        curve.append({"users": n, "power": found / draws})
    enough = next((c["users"] for c in curve if c["power"] >= POWER), None)
    return {"effect": effect, "curve": curve, "users_at_power": enough, "projected": projected_users(o)}


def projected_users(o: Outcomes, *, level: float = 0.95, power: float = POWER) -> float | None:
    """The users a fixed-size test needs for ``power``, projected from the full replay by the normal approximation
    (the usual sample-size formula, n = N ((z_level + z_power) / z_N)^2 for an A/B test's difference of CTRs with
    its clustered standard error; for the sign test, the binomial's normal approximation over the share of users
    who click): beyond the replay's users, where the curve cannot reach. None when the replay shows no effect."""
    za, zb = float(norm.ppf(0.5 + level / 2)), float(norm.ppf(power))
    if o.kind == INTERLEAVE:
        wins_a, wins_b = int((o.first > o.second).sum()), int((o.second > o.first).sum())
        share, wins = wins_b / max(1, wins_a + wins_b), wins_a + wins_b
        if not wins or share == 0.5:
            return None
        per_clicker = ((za * 0.5 + zb * math.sqrt(share * (1 - share))) / (share - 0.5)) ** 2
        return per_clicker * len(o.first) / wins
    v = o.first
    a, b = (ratio(o.third[v == side], o.second[v == side]) for side in (0, 1))
    se = math.hypot(a.se, b.se)
    if se == 0 or a.value == b.value:
        return None
    return len(v) * ((za + zb) / (abs(b.value - a.value) / se)) ** 2


PEEK_DRAWS = 200
"""Experiments drawn for the peeking figures (each read every ``--check-every`` users up to the replay's size)."""
TAU_GRID = (0.05, 0.1, 0.2, 0.5, 1.0)
"""The A/B mixture spreads ``--tau-grid`` compares (shared/ml/online.py ``ANYTIME_TAU``)."""


def _verdicts(o: Outcomes, rows: np.ndarray, *, tau: float) -> tuple[bool, bool, float]:
    """(fixed-sample significant, always-valid significant, signed effect) of the experiment of ``rows``."""
    if o.kind == INTERLEAVE:
        p = preference(o.first[rows], o.second[rows])
        return p.significant, p.always_valid_significant, p.preference
    v = o.first[rows]
    a, b = rows[v == 0], rows[v == 1]
    d = difference(ratio(o.third[a], o.second[a]), ratio(o.third[b], o.second[b]), tau=tau)
    return d.significant, d.always_valid_significant, d.difference


def null_of(o: Outcomes, rng: np.random.Generator) -> Outcomes:
    """The same outcomes with no difference between the variants, drawn afresh for each unit: an A/B test's units
    dealt to a variant by a coin each, an interleaving's two credits swapped by a coin each. (One shuffle of the
    replay's own labels would leave a chance difference of about a standard error in it, which a test that reads
    hundreds of units drawn from it would find.)"""
    if o.kind == INTERLEAVE:
        swap = rng.random(len(o.first)) < 0.5
        return Outcomes(o.kind, np.where(swap, o.second, o.first), np.where(swap, o.first, o.second), o.third)
    return Outcomes(o.kind, rng.integers(0, 2, len(o.first)), o.second, o.third)


def peeking(o: Outcomes, *, draws: int, check_every: int, seed: int, tau: float = ANYTIME_TAU) -> dict[str, Any]:
    """Experiments read every ``check_every`` users and stopped at their first significant read, by each rule
    (the fixed-sample p-value, the always-valid one): on the replay, the users at that read (median; None for a
    run never significant within the replay's size) and how many runs called the wrong side; on null copies of
    drawn users (``null_of``, a coin per drawn user), how many runs called a difference at all (their rate: the
    peeking's false positives)."""
    rng = np.random.default_rng(seed)
    n = len(o.first)
    checks = range(check_every, n + 1, check_every)
    _, _, effect = _verdicts(o, np.arange(n), tau=tau)
    out: dict[str, Any] = {"tau": tau}
    for rule, at in (("fixed", 0), ("always_valid", 1)):
        stops: list[int | None] = []
        wrong = false = 0
        for _ in range(draws):
            order = rng.integers(0, n, n)
            stop = next((m for m in checks if _verdicts(o, order[:m], tau=tau)[at]), None)
            if stop is not None and np.sign(_verdicts(o, order[:stop], tau=tau)[2]) != np.sign(effect):
                wrong += 1
            stops.append(stop)
            drawn = rng.integers(0, n, n)
            null = null_of(Outcomes(o.kind, o.first[drawn], o.second[drawn], o.third[drawn]), rng)
            false += any(_verdicts(null, np.arange(m), tau=tau)[at] for m in checks)
        out[rule] = {"users_to_stop": spread(stops), "wrong_side": wrong / draws, "false_positive": false / draws}
    return out


def power_text(power: dict[str, dict[str, Any]], *, draws: int) -> str:
    """The power curves as lines: per kind, its power at each size, the fewest users with ``POWER``; then how many
    times as many users the A/B test needed."""
    lines = [f"# power over {draws} fixed-size experiments a size (users drawn from the full replay, each read once)"]
    for kind, p in power.items():
        curve = " ".join(f"{c['users']}:{c['power']:.2f}" for c in p["curve"])
        projected = "-" if p["projected"] is None else f"{p['projected']:,.0f}"
        lines.append(
            f"# {KIND_LABEL[kind]:<10} effect {p['effect']:+.4f}; users:power {curve}; "
            f"users for power {POWER:g}: {p['users_at_power'] or 'more than ' + str(POWER_SIZES[-1])} "
            f"(projected from the full replay: {projected})"
        )
    for what, field in (("drawn", "users_at_power"), ("projected", "projected")):
        ab, il = (power.get(kind, {}).get(field) for kind in (AB, INTERLEAVE))
        lines.append(
            f"# users an A/B test needs per user an interleaving needs at power {POWER:g}, {what}: "
            f"{_ratio_text(round(ab / il, 2) if ab and il else None)}"
        )
    for kind, p in power.items():
        for peek in p.get("peeking", ()):
            tau = f", tau {peek['tau']:g}" if kind == AB else ""
            for rule in ("fixed", "always_valid"):
                r = peek[rule]
                lines.append(
                    f"# peeking, {KIND_LABEL[kind]}{tau}, {rule.replace('_', '-')} p: users to the first "
                    f"significant read {_users_text(r['users_to_stop'])}; wrong side {r['wrong_side']:.1%}; "
                    f"a tie called significant {r['false_positive']:.1%}"
                )
    return "\n".join(lines)


# -- the table -------------------------------------------------------------------------------------------------
def spread(values: Sequence[int | None]) -> dict[str, Any]:
    """Users to a point over runs: the median and quartiles (nearest rank), a run that never got there counting as
    more than any that did (None where such a run is the figure), and how many never did."""
    if not values:
        return {"median": None, "q1": None, "q3": None, "never": 0}
    reached = sorted(v for v in values if v is not None)
    never = len(values) - len(reached)
    ordered: list[float] = [*map(float, reached), *[math.inf] * never]

    def finite(x: float) -> float | None:
        return None if math.isinf(x) else x

    return {"median": finite(statistics.median(ordered)), "q1": finite(percentile(ordered, 0.25)),
            "q3": finite(percentile(ordered, 0.75)), "never": never}  # fmt: skip


def _metric(o: dict[str, Any], k: int) -> str:
    if "wins" in o:
        wins = ", ".join(f"{name} {n}" for name, n in o["wins"].items())
        return f"wins {wins}, ties {o['ties']}; preference {o['preference']:+.3f}"
    ctr = ", ".join(f"{name} {value:.4f}" for name, value in o["ctr"].items())
    return f"CTR@{k} {ctr}; difference {o['difference']:+.4f} [{o['low']:+.4f}, {o['high']:+.4f}]"


def table(runs: list[dict[str, Any]], *, k: int) -> list[str]:
    """One line per run, then the medians per kind."""
    head = f"{'kind':<10} {'run':>3} {'users':>5} {'1st sig':>7} {'stop':>5} {'p':>8}  {'winner':<8}"
    lines = [f"{head} metric at the end"]
    for i, r in enumerate(runs):
        o = r["outcome"]
        run = sum(x["kind"] == r["kind"] for x in runs[: i + 1])
        lines.append(f"{KIND_LABEL[r['kind']]:<10} {run:>3} {r['users']:>5} {r['first_significant'] or '-':>7} "
                     f"{r['stopped'] or '-':>5} {o['p_value']:>8.2g}  {o['winner'] or '-':<8} "
                     f"{_metric(o, k)}")  # fmt: skip
    return lines


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per kind: the users at first significance and at the stop over its runs (``spread``), and how many runs
    each variant won (``-``: none significantly); and how many times as many users the A/B test needed as the
    interleaving, at the medians."""
    out: dict[str, Any] = {}
    for kind in (AB, INTERLEAVE):
        mine = [r for r in runs if r["kind"] == kind]
        out[kind] = {"runs": len(mine), "first_significant": spread([r["first_significant"] for r in mine]),
                     "stopped": spread([r["stopped"] for r in mine]),
                     "winners": dict(Counter(r["outcome"]["winner"] or "-" for r in mine))}  # fmt: skip
    for point in ("first_significant", "stopped"):
        ab, il = out[AB][point]["median"], out[INTERLEAVE][point]["median"]
        out[f"ratio_{point}"] = round(ab / il, 2) if ab and il else None
    return out


def _users_text(s: dict[str, Any]) -> str:
    def one(x: float | None) -> str:
        return "never" if x is None else f"{x:g}"

    never = f", {s['never']} never" if s["never"] else ""
    return f"{one(s['median'])} (quartiles {one(s['q1'])}-{one(s['q3'])}{never})"


def _ratio_text(value: float | None) -> str:
    return "-" if value is None else f"{value:g}x"


# -- main -----------------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--data", type=Path, default=SMALL, help="a MovieLens directory")
    parser.add_argument("--users", type=int, default=0, help="replay at most this many held-out users (0: all)")
    parser.add_argument("--check-every", type=int, default=CHECK_EVERY, help="users between reads of the report")
    parser.add_argument("--stable", type=int, default=STABLE, help="significant checks in a row that stop a run")
    parser.add_argument("--repeats", type=int, default=REPEATS, help="runs of each kind, each in a fresh order")
    parser.add_argument("--seed", type=int, default=42, help="draws the users and each run's order")
    parser.add_argument("--k", type=int, default=10, help="movies per answer, and CTR@k's k")
    parser.add_argument("--control", default=CONTROL, help="the first variant's recipe (and name)")
    parser.add_argument("--default", default=DEFAULT_RECIPE, help="the second variant's recipe (named default)")
    parser.add_argument("--clicks", choices=CLICK_MODELS, default="all", help="how a simulated user clicks")
    parser.add_argument("--json", type=Path, default=None, help="also write the runs here as JSON")
    parser.add_argument("--cpu-workers", type=int, default=2, help="CPU worker processes of the stack")
    parser.add_argument(
        "--peek-draws",
        type=int,
        default=PEEK_DRAWS,
        help="experiments drawn for the peeking figures, each read every --check-every users (0: none)",
    )
    parser.add_argument(
        "--tau-grid",
        action="store_true",
        help=f"the peeking figures of the A/B test at each mixture spread of {TAU_GRID}",
    )
    parser.add_argument("--power-draws", type=int, default=POWER_DRAWS,
                        help="experiments drawn per size for the power curves (0: none)")  # fmt: skip
    args = parser.parse_args(argv)
    how = Replay(k=args.k, check_every=max(1, args.check_every), stable=max(1, args.stable), clicks=args.clicks)
    print(machine(f"{args.cpu_workers} CPU worker processes", f"clicks: {args.clicks}"), flush=True)
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="movierec-online-") as scratch:
        root = Path(scratch) / "data"
        held = hold_out(args.data.resolve(), root / TRAIN_DIR)
        population = sorted(held.later)
        random.Random(args.seed).shuffle(population)
        population = population[: args.users] if args.users else population
        print(f"# {args.data.name}: {held.train_ratings:,} training ratings, {held.held_out_ratings:,} held out of "
              f"{len(held.later):,} users; {len(population):,} replayed", flush=True)  # fmt: skip
        settings = Settings(data_root=root, key_prefix=PREFIX)
        with fresh_stack(settings, Path(scratch) / "stack", cpu_workers=args.cpu_workers) as stack:
            api = stack.api_url
            models: dict[str, dict[str, Any]] = {}
            for name, recipe in ((args.control, args.control), (DEFAULT_NAME, args.default)):
                start = time.perf_counter()
                job = train_on(api, TRAIN_DIR, recipe=recipe)
                result = _call("GET", f"{api}{job['result_url']}")
                pipeline_s = round(time.perf_counter() - start, 1)
                models[name] = {"recipe": recipe, "trained": result["recipe"], "version": result["model"],
                                "chosen": result.get("chosen"), "pipeline_s": pipeline_s}  # fmt: skip
            for name, model in models.items():
                model["offline"] = offline(api, model["version"], held, k=args.k)
                o = model["offline"]
                chosen = f" (chose {model['trained']} {json.dumps((model['chosen'] or {}).get('setting'))})" \
                    if model["recipe"] != model["trained"] or model["chosen"] else ""  # fmt: skip
                print(f"{name:<8} recipe {model['recipe']}{chosen}: pipeline {model['pipeline_s']:.0f} s; offline "
                      f"NDCG@{args.k} {o['ndcg']:.4f}, recall {o['recall']:.4f}, HR {o['hr']:.3f} over "
                      f"{o['users']} users", flush=True)  # fmt: skip
            variants = {name: model["version"] for name, model in models.items()}
            runs = []
            for kind in (AB, INTERLEAVE):
                for r in range(args.repeats):
                    order = list(population)
                    random.Random(f"{args.seed}-{kind}-{r}").shuffle(order)
                    run = run_experiment(api, f"{kind}-{r + 1}", kind, variants=variants, users=order, held=held,
                                         how=how, seed=args.seed * 1000 + r)  # fmt: skip
                    runs.append(run)
                    print(f"# {run['name']}: {run['users']} users in {run['seconds']:.1f} s, "
                          f"{run['events']['credited']:,} events credited", flush=True)  # fmt: skip
            power = {}
            for kind in (AB, INTERLEAVE) if args.power_draws else ():
                name, order = f"{kind}-all", list(population)
                random.Random(f"{args.seed}-{kind}-all").shuffle(order)
                run_experiment(api, name, kind, variants=variants, users=order, held=held, seed=args.seed * 1000 + 999,
                               how=replace(how, check_every=len(order), stable=len(order) + 1))  # fmt: skip
                replayed = outcomes(stack.settings, api, name, order)
                power[kind] = power_curve(replayed, draws=args.power_draws, seed=args.seed)
                taus = TAU_GRID if args.tau_grid and kind == AB else (ANYTIME_TAU,)
                if args.peek_draws:
                    power[kind]["peeking"] = [peeking(replayed, draws=args.peek_draws, check_every=how.check_every,
                                                      seed=args.seed, tau=tau) for tau in taus]  # fmt: skip
    print("\n".join(table(runs, k=args.k)))
    found = summary(runs)
    for kind in (AB, INTERLEAVE):
        s = found[kind]
        print(f"# {KIND_LABEL[kind]}, {s['runs']} runs: median users to first significance "
              f"{_users_text(s['first_significant'])}, to the stop ({how.stable} significant checks in a row, "
              f"every {how.check_every} users) {_users_text(s['stopped'])}; runs won {s['winners']}")  # fmt: skip
    print(f"# users an A/B test needed per user an interleaving needed (medians): "
          f"{_ratio_text(found['ratio_first_significant'])} at first significance, "
          f"{_ratio_text(found['ratio_stopped'])} at the stop")  # fmt: skip
    if power:
        print(power_text(power, draws=args.power_draws))
    took = time.perf_counter() - began
    print(f"# wall time: {took:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({
            "machine": machine(), "data": str(args.data), "users": len(population), "k": args.k,
            "check_every": how.check_every, "stable": how.stable, "seed": args.seed, "clicks": how.clicks,
            "held_out": {"train_ratings": held.train_ratings, "held_out_ratings": held.held_out_ratings,
                         "users": len(held.later)},
            "control": args.control, "default": args.default, "models": models, "runs": runs, "summary": found,
            "power": power, "power_draws": args.power_draws,
            "seconds": round(took, 1),
        }, indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
