"""Per-user ranking metrics and paired bootstrap intervals: is one recommender's lead over another real (issue #24)?

Pure numpy, no Redis. Data flow:

    recommended (e, k) movie rows of the evaluated users, relevant (e, n_movies) bool CSR
      └─ per_user ──> {"recall", "ndcg", "hit"}: (e,) float64 each; their means are evaluate.metrics'
    a, b: (e,) one metric of two recommenders on the same users, in the same order (paired)
      └─ paired_bootstrap: d = a - b; ``resamples`` times, e users drawn with replacement, mean(d) of them
           └─ Interval: the observed mean(d) and the percentile bounds of the resampled means
                └─ verdict: one sentence, "a significant lead", "a tie" or "significantly behind"

The definitions are evaluate.metrics' (Recall@k = hits / min(k, |relevant|); NDCG@k with binary gains and the
ideal DCG over min(k, |relevant|) positions; HR@k = any hit), computed the same way, so that the means agree bit
for bit. Pairing matters: both recommenders face the same users, so the per-user difference cancels out how hard
each user is, and the interval is much narrower than two separate ones.

Resampled user indices are floor(u * e) of uniform doubles u from ``np.random.default_rng(seed)``, drawn in
blocks of resamples that fit ``BOOTSTRAP_BLOCK_VALUES``: the generator's doubles are one stream whatever the
block shape, so resample r always uses doubles r*e .. (r+1)*e - 1 and the interval does not depend on the block
size (``Generator.integers`` would: it buffers half-used 32-bit draws per call).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

BOOTSTRAP_RESAMPLES = 2000
"""Resamples of the users per interval (percentile bounds want a thousand or more to settle their tails)."""
BOOTSTRAP_LEVEL = 0.95
"""Two-sided confidence level of an interval."""
BOOTSTRAP_BLOCK_VALUES = 1 << 21
"""Resampled user values held at a time: a block's doubles, indices and gathered values are 16 MiB each."""


@dataclass(frozen=True)
class Interval:
    """A paired bootstrap interval for mean(a - b): ``difference`` observed, [``low``, ``high``] its bounds."""

    difference: float  # mean(a - b) over all users
    low: float  # the (1 - level) / 2 quantile of the resampled means
    high: float  # the (1 + level) / 2 quantile
    level: float  # e.g. 0.95
    resamples: int  # how many resamples the bounds come from (0 when there were no users)

    @property
    def significant(self) -> bool:
        """The interval excludes 0: a lead (low > 0) or a deficit (high < 0) at this level."""
        return self.low > 0 or self.high < 0

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "significant": self.significant}


def per_user(recommended: np.ndarray, relevant: sp.csr_matrix, *, k: int) -> dict[str, np.ndarray]:
    """Recall@k, NDCG@k and hit@k (1.0 or 0.0) of each evaluated user: (e,) float64 arrays under "recall",
    "ndcg" and "hit". ``recommended``: (e, k) movie rows, -1 = nothing; ``relevant``: (e, n_movies) bool CSR,
    at least one relevant movie per row (an evaluated user has one)."""
    if k < 1:
        raise ValueError(f"k must be at least 1, not {k}")
    rec = np.asarray(recommended, dtype=np.int64)[:, :k]  # (e, <= k)
    e = relevant.shape[0]
    if rec.shape[0] != e:
        raise ValueError(f"{rec.shape[0]} rows of recommendations for {e} rows of relevant movies")
    n_relevant = np.diff(relevant.indptr)  # (e,)
    if (n_relevant == 0).any():
        raise ValueError(f"{int((n_relevant == 0).sum())} users have no relevant movie: they are not evaluated")
    if e == 0:
        return {name: np.zeros(0, dtype=np.float64) for name in ("recall", "ndcg", "hit")}
    valid = rec >= 0
    safe = np.where(valid, rec, 0)
    # hits[i, p]: the movie at position p is relevant for user i (a CSR lookup of every (i, movie) pair).
    looked_up = relevant[np.repeat(np.arange(e), rec.shape[1]), safe.ravel()]
    hits = valid & np.asarray(looked_up).reshape(rec.shape).astype(bool)  # (e, <= k)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))  # (k,) 1 / log2(position + 1), positions from 1
    dcg = (hits * discounts[: rec.shape[1]]).sum(axis=1)  # (e,)
    ideal = np.cumsum(discounts)[np.minimum(k, n_relevant) - 1]  # (e,) every one of min(k, |rel|) slots a hit
    return {
        "recall": np.asarray(hits.sum(axis=1) / np.minimum(k, n_relevant), dtype=np.float64),
        "ndcg": np.asarray(dcg / ideal, dtype=np.float64),
        "hit": hits.any(axis=1).astype(np.float64),
    }


def paired_bootstrap(
    a: np.ndarray,
    b: np.ndarray,
    *,
    seed: int,
    resamples: int = BOOTSTRAP_RESAMPLES,
    level: float = BOOTSTRAP_LEVEL,
) -> Interval:
    """The percentile interval of mean(a - b) over ``resamples`` resamples of the users (with replacement);
    ``a`` and ``b`` are (e,) values of one metric for the same users in the same order. The same inputs and
    seed give the same interval, bit for bit; no users gives [0, 0] (not significant)."""
    return paired_bootstraps([(a, b)], seed=seed, resamples=resamples, level=level)[0]


def paired_bootstraps(
    pairs: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    seed: int,
    resamples: int = BOOTSTRAP_RESAMPLES,
    level: float = BOOTSTRAP_LEVEL,
) -> list[Interval]:
    """``paired_bootstrap`` of each (a, b) of ``pairs`` (all over the same e users), the users drawn once for
    all of them: each interval is the bits ``paired_bootstrap`` gives it alone, and a table's rows cost one
    draw per segment, not one per row and metric."""
    diffs = []
    for first, second in pairs:
        a, b = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
        if a.ndim != 1 or a.shape != b.shape:
            raise ValueError(f"paired values need two 1-D arrays of one length, not shapes {a.shape} and {b.shape}")
        diffs.append(a - b)  # (e,)
    if len({len(d) for d in diffs}) > 1:
        raise ValueError(f"pairs over different numbers of users: {sorted({len(d) for d in diffs})}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie strictly between 0 and 1, not {level}")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, not {resamples}")
    e = len(diffs[0]) if diffs else 0
    if e == 0:
        return [Interval(difference=0.0, low=0.0, high=0.0, level=level, resamples=0) for _ in diffs]
    rng = np.random.default_rng(seed)
    block = max(1, BOOTSTRAP_BLOCK_VALUES // e)
    means = np.empty((len(diffs), resamples), dtype=np.float64)  # mean(d) of each resample, per pair
    for lo in range(0, resamples, block):
        hi = min(resamples, lo + block)
        # u < 1 and u * e rounds below e for every e < 2**53, so the rows stay in range.
        rows = (rng.random((hi - lo, e)) * e).astype(np.int64)  # (hi - lo, e) users drawn, with replacement
        for j, d in enumerate(diffs):
            means[j, lo:hi] = d[rows].mean(axis=1)
    out = []
    for d, m in zip(diffs, means, strict=True):
        low, high = np.quantile(m, [(1 - level) / 2, (1 + level) / 2])
        out.append(Interval(difference=float(d.mean()), low=float(low), high=float(high), level=level,
                            resamples=resamples))  # fmt: skip
    return out


def signed(difference: float, *others: float) -> list[str]:
    """``difference`` and ``others`` (an interval's bounds) with their signs, at 4 decimals, or at as many more
    as ``difference`` needs to show two significant digits when 4 would print it as 0 ("-0.000023, 95 % CI
    [-0.000094, +0.000012]", not "-0.0000, 95 % CI [-0.0001, +0.0000]"): the same decimals for all, so they
    read side by side."""
    places = 4
    if difference != 0 and round(difference, 4) == 0:
        places = 1 - int(np.floor(np.log10(abs(difference))))
    return [f"{x:+.{places}f}" for x in (difference, *others)]


def verdict(name: str, baseline: str, interval: Interval, *, metric: str = "NDCG@10") -> str:
    """One line for a report: "hybrid leads EASE by +0.0077 NDCG@10 (95 % CI [-0.0021, +0.0173]): a tie, not a
    significant lead"; "a significant lead" when the interval lies above 0, "significantly behind" below it."""
    if interval.low > 0:
        outcome = "a significant lead"
    elif interval.high < 0:
        outcome = "significantly behind"
    else:
        outcome = "a tie, not a significant lead"
    difference, low, high = signed(interval.difference, interval.low, interval.high)
    return (
        f"{name} leads {baseline} by {difference} {metric} ({interval.level * 100:g} % CI [{low}, {high}]): {outcome}"
    )
