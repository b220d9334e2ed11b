"""Intervals: per-user metrics against a hand-computed case and against evaluate.metrics' means, the paired
bootstrap against exact cases and a slow one-draw-at-a-time reference, and the verdict sentences."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from shared.ml import intervals
from shared.ml.evaluate import Split, metrics
from shared.ml.intervals import Interval, paired_bootstrap, paired_bootstraps, per_user, signed, verdict


def relevant_csr(rows: list[list[int]], n: int) -> sp.csr_matrix:
    m = sp.lil_matrix((len(rows), n), dtype=bool)
    for i, r in enumerate(rows):
        for j in r:
            m[i, j] = True
    return m.tocsr()


# -- per_user ------------------------------------------------------------------------------------------------
def test_per_user_hand_computed() -> None:
    # 3 users, 6 movies, k = 3; the discount of position p (from 1) is 1 / log2(p + 1).
    # user 0: relevant {1, 3}, recommended [1, 2, 3] -> hits at positions 1 and 3.
    #   recall = 2 / min(3, 2) = 1;  DCG = 1/log2(2) + 1/log2(4) = 1.5;  IDCG (2 slots) = 1 + 1/log2(3) = 1.63093
    #   NDCG = 0.91972
    # user 1: relevant {0, 1, 2, 3, 4}, recommended [5, 4, -1] -> a hit at position 2; the -1 pad is no hit
    #   even though movie 0 (where a pad would land if looked up) is relevant.
    #   recall = 1 / min(3, 5) = 1/3;  DCG = 1/log2(3) = 0.63093;  IDCG (3 slots) = 1 + 0.63093 + 0.5 = 2.13093
    #   NDCG = 0.29608
    # user 2: relevant {5}, recommended [0, 1, 2] -> nothing: 0, 0, 0.
    got = per_user(np.array([[1, 2, 3], [5, 4, -1], [0, 1, 2]]), relevant_csr([[1, 3], [0, 1, 2, 3, 4], [5]], 6), k=3)
    assert got["recall"] == pytest.approx([1.0, 1 / 3, 0.0], abs=1e-15)
    assert got["ndcg"] == pytest.approx(
        [1.5 / (1 + 1 / math.log2(3)), (1 / math.log2(3)) / (1.5 + 1 / math.log2(3)), 0]
    )
    assert got["ndcg"] == pytest.approx([0.91972, 0.29608, 0.0], abs=1e-5)
    assert got["hit"].tolist() == [1.0, 1.0, 0.0]
    assert all(v.dtype == np.float64 and v.shape == (3,) for v in got.values())


def random_case(seed: int, *, e: int, n: int, k: int) -> tuple[np.ndarray, Split]:
    """Random recommendations (distinct movies, some rows padded with -1) and a split whose evaluated users
    each have 1 to 2k relevant movies."""
    rng = np.random.default_rng(seed)
    rec = np.stack([rng.permutation(n)[:k] for _ in range(e)])  # (e, k)
    pad = rng.integers(0, k + 1, size=e)  # (e,) how many trailing -1 per row
    rec[np.arange(k)[None, :] >= k - pad[:, None]] = -1
    relevant = relevant_csr(
        [rng.choice(n, size=rng.integers(1, 2 * k + 1), replace=False).tolist() for _ in range(e)], n
    )
    split = Split(
        user_ids=np.arange(e),
        train=sp.csr_matrix((e, n), dtype=np.float32),
        evaluated=np.arange(e),
        relevant=relevant,
        cold=rng.random(n) < 0.2,
    )
    return rec, split


@pytest.mark.parametrize(("seed", "k"), [(0, 1), (1, 3), (2, 10), (3, 20)])
def test_per_user_means_are_evaluate_metrics(seed: int, k: int) -> None:
    rec, split = random_case(seed, e=200, n=40, k=k)
    got = per_user(rec, split.relevant, k=k)
    want = metrics(rec, split, k=k)
    assert float(got["recall"].mean()) == want["recall"]
    assert float(got["ndcg"].mean()) == want["ndcg"]
    assert float(got["hit"].mean()) == want["hr"]


def test_per_user_refuses_mismatched_rows_and_users_with_nothing_relevant() -> None:
    with pytest.raises(ValueError, match="2 rows of recommendations for 1"):
        per_user(np.array([[0], [1]]), relevant_csr([[0]], 3), k=1)
    with pytest.raises(ValueError, match="no relevant movie"):
        per_user(np.array([[0], [1]]), relevant_csr([[0], []], 3), k=1)


def test_per_user_no_users() -> None:
    got = per_user(np.zeros((0, 5), dtype=np.int64), relevant_csr([], 4), k=5)
    assert {name: v.shape for name, v in got.items()} == {"recall": (0,), "ndcg": (0,), "hit": (0,)}


# -- paired_bootstrap ----------------------------------------------------------------------------------------
def test_identical_recommenders_give_zero() -> None:
    a = np.random.default_rng(0).random(300)
    got = paired_bootstrap(a, a.copy(), seed=1)
    assert got == Interval(difference=0.0, low=0.0, high=0.0, level=0.95, resamples=2000)
    assert not got.significant


def test_a_constant_shift_is_every_resample() -> None:
    # Dyadic values (multiples of 1/1024) and a shift of 1/8: a - b is exactly 0.125 for every user, and so is
    # every resample's mean (the sums are exact), so the interval collapses onto the shift.
    b = np.random.default_rng(2).integers(0, 1024, size=257) / 1024
    got = paired_bootstrap(b + 0.125, b, seed=3, resamples=500)
    assert (got.difference, got.low, got.high) == (0.125, 0.125, 0.125)
    assert got.significant


def test_same_seed_same_interval() -> None:
    rng = np.random.default_rng(4)
    a, b = rng.random(500), rng.random(500)
    first = paired_bootstrap(a, b, seed=7)
    assert paired_bootstrap(a, b, seed=7) == first  # every field, bit for bit
    assert paired_bootstrap(a, b, seed=8) != first
    assert first.low < first.difference < first.high


def slow_bootstrap(a: list[float], b: list[float], *, seed: int, resamples: int, level: float) -> tuple[float, float]:
    """The bootstrap written out: one double at a time from the same generator, user floor(u * e), a Python mean
    per resample, and the linear-interpolation percentile by hand."""
    rng = np.random.default_rng(seed)
    e = len(a)
    d = [x - y for x, y in zip(a, b, strict=True)]
    means = []
    for _ in range(resamples):
        users = [int(rng.random() * e) for _ in range(e)]
        means.append(sum(d[u] for u in users) / e)
    means.sort()

    def quantile(q: float) -> float:
        at = q * (resamples - 1)
        below = math.floor(at)
        above = min(below + 1, resamples - 1)
        return means[below] + (at - below) * (means[above] - means[below])

    return quantile((1 - level) / 2), quantile((1 + level) / 2)


@pytest.mark.parametrize(("e", "level"), [(1, 0.95), (7, 0.9), (31, 0.95)])
def test_bootstrap_matches_a_slow_reference(e: int, level: float) -> None:
    rng = np.random.default_rng(e)
    a, b = rng.random(e), rng.random(e)
    got = paired_bootstrap(a, b, seed=11, resamples=203, level=level)
    low, high = slow_bootstrap(a.tolist(), b.tolist(), seed=11, resamples=203, level=level)
    assert got.low == pytest.approx(low, abs=1e-12)
    assert got.high == pytest.approx(high, abs=1e-12)
    assert got.difference == pytest.approx(float(np.mean(a - b)), abs=1e-15)
    assert (got.level, got.resamples) == (level, 203)


def test_the_block_size_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(5)
    a, b = rng.random(50), rng.random(50)
    whole = paired_bootstrap(a, b, seed=2, resamples=300)  # one block
    monkeypatch.setattr(intervals, "BOOTSTRAP_BLOCK_VALUES", 50 * 7)  # blocks of 7 resamples, the last of 6
    assert paired_bootstrap(a, b, seed=2, resamples=300) == whole


def test_significance_both_ways_and_a_tie() -> None:
    rng = np.random.default_rng(6)
    b = rng.random(400)
    ahead = paired_bootstrap(b + 0.05 + 0.01 * rng.standard_normal(400), b, seed=0)
    assert ahead.significant and ahead.low > 0
    behind = paired_bootstrap(b - 0.05 + 0.01 * rng.standard_normal(400), b, seed=0)
    assert behind.significant and behind.high < 0
    # Half the users gain 0.3, half lose 0.3: no lead.
    tie = paired_bootstrap(b + np.tile([0.3, -0.3], 200), b, seed=0)
    assert not tie.significant and tie.low < 0 < tie.high


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="one length"):
        paired_bootstrap(np.zeros(3), np.zeros(4), seed=0)
    with pytest.raises(ValueError, match="one length"):
        paired_bootstrap(np.zeros((2, 2)), np.zeros((2, 2)), seed=0)
    with pytest.raises(ValueError, match="level"):
        paired_bootstrap(np.zeros(3), np.zeros(3), seed=0, level=1.0)
    with pytest.raises(ValueError, match="resamples"):
        paired_bootstrap(np.zeros(3), np.zeros(3), seed=0, resamples=0)


def test_no_users() -> None:
    got = paired_bootstrap(np.zeros(0), np.zeros(0), seed=0)
    assert got == Interval(difference=0.0, low=0.0, high=0.0, level=0.95, resamples=0)
    assert got.to_json() == {
        "difference": 0.0,
        "low": 0.0,
        "high": 0.0,
        "level": 0.95,
        "resamples": 0,
        "significant": False,
    }


# -- verdict -------------------------------------------------------------------------------------------------
def test_verdicts() -> None:
    tie = Interval(difference=0.0077, low=-0.0021, high=0.0173, level=0.95, resamples=2000)
    assert verdict("hybrid", "EASE lam=500", tie) == (
        "hybrid leads EASE lam=500 by +0.0077 NDCG@10 (95 % CI [-0.0021, +0.0173]): a tie, not a significant lead"
    )
    lead = Interval(difference=0.02, low=0.01, high=0.03, level=0.9, resamples=2000)
    assert verdict("hybrid", "item-kNN", lead, metric="Recall@10") == (
        "hybrid leads item-kNN by +0.0200 Recall@10 (90 % CI [+0.0100, +0.0300]): a significant lead"
    )
    behind = Interval(difference=-0.01234, low=-0.02, high=-0.00456, level=0.95, resamples=2000)
    assert verdict("hybrid", "EASE", behind) == (
        "hybrid leads EASE by -0.0123 NDCG@10 (95 % CI [-0.0200, -0.0046]): significantly behind"
    )


def test_a_difference_too_small_for_four_decimals_shows_two_significant_digits() -> None:
    assert signed(0.0077, -0.0021, 0.0173) == ["+0.0077", "-0.0021", "+0.0173"]
    assert signed(-0.0000234, -0.0000941, 0.0000123) == ["-0.000023", "-0.000094", "+0.000012"]
    assert signed(0.0, -0.0001, 0.0001) == ["+0.0000", "-0.0001", "+0.0001"]  # exactly 0: nothing to show
    tiny = Interval(difference=-0.0000234, low=-0.0000941, high=0.0000123, level=0.95, resamples=2000)
    assert verdict("hybrid", "EASE", tiny) == (
        "hybrid leads EASE by -0.000023 NDCG@10 (95 % CI [-0.000094, +0.000012]): a tie, not a significant lead"
    )


def test_many_pairs_drawn_once_give_each_pairs_own_interval() -> None:
    rng = np.random.default_rng(9)
    b = rng.random(700)
    pairs = [(b + 0.01 * j + 0.05 * rng.standard_normal(700), b) for j in range(5)]
    together = paired_bootstraps(pairs, seed=4, resamples=900)
    assert together == [paired_bootstrap(a, b, seed=4, resamples=900) for a, b in pairs]  # bit for bit
    with pytest.raises(ValueError, match="different numbers of users"):
        paired_bootstraps([(b, b), (b[:5], b[:5])], seed=0)
