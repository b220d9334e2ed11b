"""The evaluation's derived training dataset: exactly the temporal split's training part, nothing of the test part.

Pure: ``shared.logic.scoring.cut`` on ratings arrays shaped as a stored dataset's; the job's table from
shard stats (``shared.logic.evaluation.build_table``); the content-addressed ids.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from shared.jobs.sharded import ranges
from shared.jobs.store import Job
from shared.logic.evaluation import (
    EvaluationState,
    _child_job,
    _scoring,
    build_table,
    choose,
    cold_intervals,
    factorised_by,
    fit_groups,
    parent,
    recipe_variants,
    stages,
    table_rows,
)
from shared.logic.fits import setting_fit_id
from shared.logic.scoring import RowScores, cell_stage, cut, plan_items, ratings_matrix
from shared.ml import intervals, splits
from shared.ml.protocol import Protocol, training_dataset_id
from shared.ml.recipes import SERVE_GRIDS
from shared.store.datasets import DatasetRatings

N_MOVIES = 60


def dataset_ratings(seed: int = 3, users: int = 40) -> DatasetRatings:
    """Ratings as a dataset stores them: grouped by ascending user id, each user's in file order (not time
    order), one rating per (user, movie), many timestamps tied."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 30, size=users)  # some users under min_ratings
    movie = np.concatenate([rng.choice(N_MOVIES, size=c, replace=False) for c in counts]).astype(np.int32)
    values = rng.choice(np.arange(1, 11) / 2, size=len(movie)).astype(np.float32)
    times = rng.integers(1_000, 1_020, size=len(movie)).astype(np.int64)  # few distinct times: ties
    return DatasetRatings(
        user_ids=np.sort(rng.choice(np.arange(1, 500), size=users, replace=False)).astype(np.int32),
        indptr=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        movie_index=movie,
        values=values,
        timestamps=times,
    )


def per_user(ratings: DatasetRatings) -> dict[int, dict[int, tuple[float, int]]]:
    """user id -> movie -> (rating, timestamp)."""
    assert ratings.timestamps is not None
    out: dict[int, dict[int, tuple[float, int]]] = {}
    for j, user in enumerate(ratings.user_ids.tolist()):
        lo, hi = ratings.indptr[j], ratings.indptr[j + 1]
        rows = zip(ratings.movie_index[lo:hi], ratings.values[lo:hi], ratings.timestamps[lo:hi], strict=True)
        out[user] = {int(m): (float(v), int(t)) for m, v, t in rows}
    return out


OTHER = Protocol(min_ratings=3, train_fraction=0.5, relevant_at=3.0, new_user_share=0.0)


@pytest.mark.parametrize("protocol", [Protocol(new_user_share=0.0), OTHER])
def test_the_training_part_holds_no_test_rating_and_ends_before_it(protocol: Protocol) -> None:
    ratings = dataset_ratings()
    made = cut(ratings, N_MOVIES, protocol)
    split, training = made.split, made.training
    everything, trained = per_user(ratings), per_user(training)
    assert set(trained) == {u for u, r in everything.items() if len(r) >= protocol.min_ratings}
    assert training.user_ids.tolist() == split.user_ids.tolist()
    for row, user in enumerate(split.user_ids.tolist()):
        train, full = trained[user], everything[user]
        test = {m: full[m] for m in full.keys() - train.keys()}
        assert all(full[m] == train[m] for m in train)  # the user's own ratings, unchanged
        assert len(train) == round(protocol.train_fraction * len(full))
        if train and test:
            assert max(t for _, t in train.values()) <= min(t for _, t in test.values())
        assert set(np.flatnonzero(split.train[row].toarray()).tolist()) == set(train)
        if row in split.evaluated:
            relevant = split.relevant[int(np.searchsorted(split.evaluated, row))]
            assert set(relevant.indices.tolist()) == {m for m, (v, _) in test.items() if v >= protocol.relevant_at}
            assert not set(relevant.indices.tolist()) & set(train)
    # within a user, the stored order is kept (what ingestion promises of ratings.csv)
    for j in range(len(training.user_ids)):
        lo, hi = training.indptr[j], training.indptr[j + 1]
        source = int(np.searchsorted(ratings.user_ids, training.user_ids[j]))
        order = ratings.movie_index[ratings.indptr[source] : ratings.indptr[source + 1]].tolist()
        kept = training.movie_index[lo:hi].tolist()
        assert kept == [m for m in order if m in set(kept)]


@pytest.mark.parametrize("protocol", [Protocol(), Protocol(split="global")])
def test_changing_a_test_rating_changes_nothing_in_the_training_part(protocol: Protocol) -> None:
    ratings = dataset_ratings(seed=8)
    made = cut(ratings, N_MOVIES, protocol)
    split, training = made.split, made.training
    in_test = made.parts.label != splits.TRAIN
    changed = ratings.values.copy()
    changed[in_test] = np.where(changed[in_test] >= 4.0, 0.5, 5.0)  # every test (and cohort) rating flips
    other = cut(ratings._replace(values=changed), N_MOVIES, protocol)
    split2, training2 = other.split, other.training
    for name in DatasetRatings._fields:
        assert np.array_equal(getattr(training, name), getattr(training2, name)), name
    assert (split.train != split2.train).nnz == 0
    assert split.relevant.nnz != split2.relevant.nnz or (split.relevant != split2.relevant).nnz  # the test part moved


def test_the_stored_training_part_is_the_splits_for_every_rule() -> None:
    ratings = dataset_ratings(seed=11, users=80)
    for kind, min_ratings, fraction, share in itertools.product(("temporal", "global"), (1, 10), (0.3, 0.8),
                                                                (0.0, 0.3)):  # fmt: skip
        protocol = Protocol(split=kind, min_ratings=min_ratings, train_fraction=fraction, new_user_share=share)
        made = cut(ratings, N_MOVIES, protocol)  # raises when the stored arrays and the split differ
        built = ratings_matrix(made.training.indptr, made.training.movie_index, made.training.values, N_MOVIES)
        assert (built != made.split.train).nnz == 0
        assert made.parts.counts()["train"] == made.split.train.nnz


def test_cut_needs_timestamps() -> None:
    with pytest.raises(ValueError, match="timestamps"):
        cut(dataset_ratings()._replace(timestamps=None), N_MOVIES, Protocol())


def test_the_training_dataset_id_depends_on_what_cuts_it_only() -> None:
    base = training_dataset_id("ds-a", Protocol())
    assert base.startswith("ds-") and len(base) == 27
    assert training_dataset_id("ds-a", Protocol(relevant_at=3.5, k=20)) == base  # scoring only: same dataset
    assert training_dataset_id("ds-a", Protocol(max_evaluated=100)) == base
    assert training_dataset_id("ds-b", Protocol()) != base
    assert training_dataset_id("ds-a", Protocol(min_ratings=5)) != base
    assert training_dataset_id("ds-a", Protocol(train_fraction=0.7)) != base


def test_stages_and_their_share_of_the_progress_bar() -> None:
    params = {"path": "x", "recipes": ["seed", "hybrid"]}
    assert stages(params) == ["ingest", "split", "validate", "train:seed", "train:hybrid", "score"]
    assert stages({**params, "tune": False}) == ["ingest", "split", "train:seed", "train:hybrid", "score"]
    assert stages({"dataset": "d", "recipes": [], "tune": False}) == ["ingest", "split", "score"]  # its feedback
    grid = stages({"dataset": "d", "recipes": ["seed", "hybrid"], "grid": True})  # validation: every setting
    assert grid == ["split", "train:seed", "train:hybrid hidden_dim=64 liked_at=3.5",
                    "train:hybrid hidden_dim=64 liked_at=4", "train:hybrid hidden_dim=128 liked_at=3.5",
                    "train:hybrid hidden_dim=128 liked_at=4", "score"]  # fmt: skip
    shares = [parent("j", params, s) for s in stages(params)]
    assert shares[0]["index"] == 0 and shares[0]["step"] == "workers.evaluation.evaluation_step"
    # overall = (index + fraction) / stages: each stage starts where the one before ends, the last ends at 1
    for before, after in itertools.pairwise(shares):
        assert (before["index"] + 1) / before["stages"] == pytest.approx(after["index"] / after["stages"])
    assert (shares[-1]["index"] + 1) / shares[-1]["stages"] == pytest.approx(1.0)
    assert ranges(450, 200) == [(0, 200), (200, 400), (400, 450)] and ranges(0, 200) == []


def scored(ndcg: list[float], recall: list[float] | None = None) -> RowScores:
    values = np.array(ndcg)
    rec = np.array(recall if recall is not None else ndcg)
    m = {"recall": float(rec.mean()), "ndcg": float(values.mean()), "hr": 0.3, "coverage": 0.4, "cold_recall": 0.0,
         "cold_share": 0.0, "users": len(values), "cold_users": 1}  # fmt: skip
    return RowScores(m, values, rec)


def test_the_table_sums_seconds_names_skips_tuning_and_intervals() -> None:
    state = EvaluationState(
        stage=4,
        results={
            "split": {"dataset": "ds-a", "training_dataset": "ds-t", "evaluated": 4, "cold_users": 1,
                      "new_user_slices": {"1": 2}},
            "validate": {"job": "v", "chosen": {"EASE": {"lam": 200}, "hybrid": {"hidden_dim": 64}},
                         "default": "hybrid", "reference": "EASE", "users": 4,
                         "grid": [{"name": "EASE lam=200", "family": "EASE", "params": {"lam": 200}, "ndcg": 0.2},
                                  {"name": "EASE lam=500", "family": "EASE", "params": {"lam": 500}, "ndcg": 0.1}]},
            "train:seed": {"model": "m-1", "seconds": 10.0, "job": "p1"},
            "train:hybrid": {"model": "m-2", "seconds": 5.0, "job": "p2"},
        },
        children={"train:seed": "p1", "train:hybrid": "p2"},
    )  # fmt: skip
    plan = {"seed": 7, "rows": [
        {"name": "EASE lam=200", "kind": "baseline", "family": "EASE", "params": {"lam": 200}},
        {"name": "iALS", "kind": "baseline", "family": "iALS", "params": {}},
        {"name": "seed", "kind": "recipe", "family": "seed", "params": {}, "stage": "train:seed"},
        {"name": "hybrid hidden_dim=64", "kind": "recipe", "family": "hybrid", "params": {"hidden_dim": 64},
         "stage": "train:hybrid"}]}  # fmt: skip
    scores = {"all": [scored([0.1, 0.2, 0.3, 0.4]), None, scored([0.0, 0.1, 0.1, 0.2]), scored([0.6, 0.7, 0.8, 0.9])],
              "new-1": [scored([0.5, 0.5]), None, scored([0.0, 0.0]), scored([0.5, 0.6])]}  # fmt: skip
    stats = [{"seconds": {"seed": 1.0, "hybrid hidden_dim=64": 2.0}, "skipped": {"iALS": "no"}},
             {"seconds": {"seed": 1.5, "hybrid hidden_dim=64": 2.0}, "skipped": {"iALS": "no"}}]  # fmt: skip
    table = build_table({"dataset": "ds-a", "k": 5}, state, plan, scores, stats)
    ease, ials, seed, hybrid = table["rows"]
    assert (ease["model"], seed["model"], hybrid["model"]) == (None, "m-1", "m-2")  # from the state's training stages
    assert ials["skipped"] == "no" and ials["ndcg"] is None and seed["skipped"] is None
    assert seed["seconds"] == 12.5 and hybrid["seconds"] == 9.0  # pipeline wall time + scoring over shards
    assert table["best"] == "hybrid" and table["reference"] == "EASE" and table["users"] == 4
    assert "vs_reference" not in ease and ease["tuning"] == {"grid": {"EASE lam=200": 0.2, "EASE lam=500": 0.1},
                                                               "chosen": {"lam": 200}, "settings": 2,
                                                               "cold": None}  # fmt: skip
    lead = hybrid["vs_reference"]["all"]["ndcg"]
    assert lead["difference"] == pytest.approx(0.5) and lead["significant"]  # every user gains 0.5
    assert hybrid["new_users"]["new-1"]["ndcg"] == pytest.approx(0.55)
    assert hybrid["vs_reference"]["new-1"]["ndcg"]["difference"] == pytest.approx(0.05)
    assert "significant lead" in table["verdict"] and "hybrid hidden_dim=64" in table["verdict"]
    assert table["protocol"]["split"] == "temporal" and table["protocol"]["k"] == 5 and table["protocol"]["tuned"]


def test_a_grid_lists_every_setting_with_those_that_share_a_build_in_one_shard() -> None:
    params = {"dataset": "d", "grid": True, "recipes": ["hybrid"], "baselines": ["random", "item-kNN", "EASE"]}
    variants = [label for label, _, _ in recipe_variants(params)]
    state = EvaluationState(results={f"train:{v}": {"model": f"m-{i}"} for i, v in enumerate(variants)})
    rows = table_rows(params, state)
    serve = len(SERVE_GRIDS["hybrid"])  # the light-user prior's settings score each trained one
    assert [r["family"] for r in rows] == ["random"] + ["item-kNN"] * 12 + ["EASE"] * 7 + ["hybrid"] * 4 * serve
    assert len({r["name"] for r in rows}) == len(rows)
    hybrid = [r for r in rows if r["family"] == "hybrid"]
    assert len({r["stage"] for r in hybrid}) == 4  # four trainings, each scored at every serve setting
    assert all(r["params"] == {**r["params"], **r["serve"]} for r in hybrid) and hybrid[0]["serve"] == {}
    split = {"dataset": "d", "training_dataset": "t", "evaluated": 11, "new_user_slices": {"1": 66, "3": 66, "10": 0}}
    plan = _scoring(params, EvaluationState(results={**state.results, "split": split}))
    assert [s["name"] for s in plan["segments"]] == ["all", "new-1", "new-3"]
    assert plan_items(plan) == len(fit_groups(rows))  # one cell per group: every user of every segment at once
    groups = fit_groups(rows)
    # one shard per item-kNN shrink, and per trained hybrid setting (its serve-time settings scored together)
    assert [b - a for a, b in groups] == [1, 4, 4, 4] + [1] * 7 + [serve] * 4
    assert groups[0][0] == 0 and groups[-1][1] == len(rows)
    assert all(a == b for (_, a), (b, _) in itertools.pairwise(groups))  # contiguous, in row order
    for a, b in groups[1:4]:
        assert len({rows[i]["params"]["shrink"] for i in range(a, b)}) == 1


def test_validation_chooses_by_ndcg_over_every_user_and_every_new_user() -> None:
    def row(name: str, family: str, ndcg: float | None, new: float, kind: str = "recipe") -> dict[str, object]:
        slices = {f"new-{n}": {"ndcg": new, "users": 10} for n in (1, 3, 10)}
        return {"name": name, "family": family, "kind": kind, "params": {"p": name}, "ndcg": ndcg, "recall": ndcg,
                "skipped": None if ndcg is not None else "over budget", "new_users": slices}  # fmt: skip

    table = {"users": 70, "rows": [
        row("EASE a", "EASE", 0.30, 0.10, "baseline"), row("EASE b", "EASE", None, 0.0, "baseline"),
        row("pop", "most-popular", 0.10, 0.40, "baseline"),
        row("hybrid off", "hybrid", 0.32, 0.10), row("hybrid prior", "hybrid", 0.31, 0.20),
    ]}  # fmt: skip
    chose = choose(table)
    # hybrid: (70 x 0.31 + 30 x 0.20) / 100 = 0.277 beats (70 x 0.32 + 30 x 0.10) / 100 = 0.254
    assert chose["chosen"]["hybrid"] == {"p": "hybrid prior"} and chose["default"] == "hybrid"
    assert chose["chosen"]["EASE"] == {"p": "EASE a"}  # a skipped setting is never chosen
    assert chose["reference"] == "EASE"  # 0.24 against most-popular's 0.19
    by_name = {g["name"]: g["objective"] for g in chose["grid"]}
    assert by_name["hybrid prior"] == pytest.approx(0.277) and by_name["EASE b"] is None


def test_the_smallest_cold_boost_that_ties_a_best_setting_reaching_no_cold_movie_is_served_in_its_place() -> None:
    def row(name: str, ndcg: float, cold: float, boost: float | None = None, *, high: float | None = None,
            best: str = "hybrid 3") -> dict[str, object]:  # fmt: skip
        params = {"prior": 3.0} if boost is None else {"prior": 3.0, "cold_boost": boost}
        out = {"name": name, "family": "hybrid", "kind": "recipe", "params": params, "ndcg": ndcg, "recall": ndcg,
               "cold_recall": cold, "skipped": None}  # fmt: skip
        if high is not None:
            out["vs_best"] = {"difference": -0.001, "low": -0.01, "high": high, "best": best}
        return out

    ease = {"name": "EASE", "family": "EASE", "kind": "baseline", "params": {}, "ndcg": 0.205, "recall": 0.2,
            "cold_recall": 0.0, "skipped": None}  # fmt: skip
    best = row("hybrid 3", 0.21, 0.0)
    rows = [ease, best, row("hybrid 3 b0.3", 0.208, 0.05, 0.3, high=0.002),
            row("hybrid 3 b0.1", 0.209, 0.02, 0.1, high=0.004),
            row("hybrid 3 b0.5", 0.203, 0.09, 0.5, high=-0.001)]  # fmt: skip
    chose = choose({"users": 100, "rows": rows})
    # b0.5 finds the most cold movies but loses significantly; b0.1 and b0.3 tie: the smaller is served.
    assert chose["chosen"]["hybrid"] == {"prior": 3.0, "cold_boost": 0.1} and chose["default"] == "hybrid"
    why = chose["cold"]["hybrid"]
    assert (why["best"], why["served"], why["cold_recall"]) == ("hybrid 3", "hybrid 3 b0.1", 0.02)
    assert "ties it on validation" in why["text"] and "0.0200 against 0.0000" in why["text"]
    assert "EASE" not in chose["cold"] and chose["reference"] == "EASE"

    # The best: when it reaches cold movies itself, when the tie reaches none, when the interval is another's.
    for others in ([row("hybrid 3", 0.21, 0.01), rows[3]],
                   [best, row("hybrid 3 b0.1", 0.209, 0.0, 0.1, high=0.004)],
                   [best, row("hybrid 3 b0.1", 0.209, 0.02, 0.1, high=0.004, best="hybrid 1")]):  # fmt: skip
        kept = choose({"users": 100, "rows": [ease, *others]})
        assert kept["chosen"]["hybrid"] == {"prior": 3.0} and kept["cold"] == {}


def test_the_grid_table_pairs_each_cold_boost_with_its_family_s_best_over_every_user_of_every_segment() -> None:
    plan_rows = [
        {"name": "EASE", "kind": "baseline", "family": "EASE", "params": {}},
        {"name": "h", "kind": "recipe", "family": "hybrid", "params": {"prior": 3.0}, "stage": "train:h"},
        {"name": "h b", "kind": "recipe", "family": "hybrid", "params": {"prior": 3.0, "cold_boost": 0.1},
         "stage": "train:h"},
        {"name": "h1 b", "kind": "recipe", "family": "hybrid", "params": {"prior": 1.0, "cold_boost": 0.1},
         "stage": "train:h"},
    ]  # fmt: skip
    scores = {"all": [scored([0.1, 0.2, 0.3]), scored([0.5, 0.6, 0.7]), scored([0.5, 0.5, 0.7]), scored([0.1] * 3)],
              "new-1": [scored([0.2, 0.2]), scored([0.3, 0.4]), scored([0.3, 0.45]), scored([0.0, 0.0])]}  # fmt: skip
    split = {"dataset": "t", "training_dataset": "t2", "evaluated": 3, "cold_users": 0, "new_user_slices": {"1": 2}}
    state = EvaluationState(results={"split": split})
    params = {"dataset": "t", "grid": True, "k": 5}
    table = build_table(params, state, {"seed": 7, "rows": plan_rows}, scores, [])
    by_name = {r["name"]: r for r in table["rows"]}
    # only "h b" differs from hybrid's best ("h") in its cold boost alone; "h1 b" in its prior too
    assert [n for n, r in by_name.items() if "vs_best" in r] == ["h b"]
    expected = intervals.paired_bootstrap(np.array([0.5, 0.5, 0.7, 0.3, 0.45]), np.array([0.5, 0.6, 0.7, 0.3, 0.4]),
                                          seed=7)  # fmt: skip
    assert by_name["h b"]["vs_best"] == {**expected.to_json(), "best": "h"}
    assert cold_intervals(table["rows"], scores, users=3, seed=7) == {2: by_name["h b"]["vs_best"]}


def test_an_ials_pipeline_fits_the_ials_row_at_its_setting_and_only_that_one() -> None:
    """``factorised_by``: the ials recipe's factorisation (factors = hidden_dim, regularization, alpha) is one fit
    with the iALS row at the same setting; that row waits for the pipeline's training (its ``stage``), whose
    child job is asked to store the fit under the row's fit id. Any other setting fits its own."""
    ials = {"factors": 128, "regularization": 1.0, "alpha": 1.0}
    chosen = {"iALS": ials, "ials": {"hidden_dim": 128, "prior": 1.0}, "hybrid": {"hidden_dim": 64}}
    split = {"dataset": "d", "training_dataset": "t", "evaluated": 11, "new_user_slices": {}}
    state = EvaluationState(results={"validate": {"chosen": chosen}, "split": split})
    params = {"dataset": "d", "recipes": ["hybrid", "ials"], "baselines": ["item-kNN", "iALS"], "seed": 7}
    assert factorised_by(params, state) == {"train:ials": ials}
    rows = {row["name"]: row for row in table_rows(params, state)}
    assert rows["iALS factors=128 regularization=1 alpha=1"]["stage"] == "train:ials"
    assert "stage" not in rows["item-kNN k=50 shrink=0"] and rows["hybrid hidden_dim=64"]["stage"] == "train:hybrid"
    job = Job("e", "evaluate", "running", 0.0, None, None, "now", None, None, None, params)
    kind, child = _child_job(job, state, "train:ials")
    assert kind == "pipeline" and child["store_fit"] == setting_fit_id("iALS", ials, 7)
    assert "store_fit" not in _child_job(job, state, "train:hybrid")[1]
    plan = _scoring(params, state)
    stages = {cell_stage(plan, lo) for lo in range(plan_items(plan))}
    assert stages == {None, "train:hybrid", "train:ials"}  # item-kNN's cells wait for nothing

    # Another alpha chosen for the row than for the recipe: two fits, and nothing waits.
    other = EvaluationState(results={"validate": {"chosen": {**chosen, "iALS": {**ials, "alpha": 10.0}}}})
    assert factorised_by(params, other) == {}
    assert all("stage" not in row for row in table_rows(params, other) if row["kind"] == "baseline")

    # A grid: each ials variant fits the iALS setting it equals (two of the twelve).
    grid = {"dataset": "d", "grid": True, "recipes": ["ials"], "baselines": ["iALS"]}
    shared = factorised_by(grid, EvaluationState())
    assert sorted(shared) == sorted(f"train:{label}" for label, _, _ in recipe_variants(grid))
    assert sorted(s["factors"] for s in shared.values()) == [64, 128]
    assert all(s["regularization"] == 1.0 and s["alpha"] == 1.0 for s in shared.values())
    assert sum("stage" in row for row in table_rows(grid, EvaluationState()) if row["kind"] == "baseline") == 2
