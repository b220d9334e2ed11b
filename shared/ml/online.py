"""Online experiments: which variant a user sees, how two rankings share one answer, and whether a lead is real.

Pure numpy, scipy and the standard library; no Redis. Data flow:

    A/B test: an experiment's salt, a user id, the variants' shares
      └─ bucket(salt, user_id): [0, 1), the first 8 bytes of HMAC-SHA256(salt, str(user_id)) / 2**64
           └─ variant_of(salt, user_id, shares): the variant whose slice of [0, 1) holds the bucket
    per user (unit) of one variant: num (clicks, plays, ...) and den (impressions, answers, ...), (n,) each
      └─ ratio ──> Ratio: sum(num) / sum(den) with its delta-method interval, clustered by user
           Ratio of variant a, Ratio of variant b
             └─ difference(a, b) ──> Difference: b - a, its normal interval and two-sided p-value, and the
                  always-valid p-value of a mixture sequential probability ratio test (``mixture_p``)

    interleaving: two variants' rankings of one answer (item ids, best first)
      └─ team_draft(a, b, k=, rng=) ──> (items shown, the team of each: 0 = a, 1 = b); a click credits its team
           per user: clicks credited to team a, to team b, (n,) each
             └─ preference ──> Preference: users preferring a, b, neither; a sign test of b's wins among all wins,
                  and its always-valid form (``sign_mixture_p``)

Why the bucket is an HMAC keyed by the experiment's salt: each experiment splits the users independently of every
other (one unkeyed hash would put the same users in the second variant of every experiment, and one experiment's
effect would ride along in the next), and the split is the same in every process and after every restart (Python's
``hash`` of a str is salted per process by PYTHONHASHSEED).

Why the interval of a ratio is clustered by user: a user's impressions are not independent trials. One user who
clicks everything contributes many correlated clicks, and the binomial standard error sqrt(r(1 - r) / sum(den)),
which counts impressions as independent, is then far too narrow; the delta method over per-user sums treats the
user, the unit that was randomised, as the independent draw (Deng, Lu and Litz, "Applying the Delta Method in
Metric Analytics", KDD 2018).

Why two p-values: the fixed-sample p-value holds for one look at a number of users fixed in advance. A report
read as users arrive, and acted on at its first significant look, calls a tie significant far more often than 1 -
LEVEL (bench/online.py measures it). The always-valid p-value (Johari, Pekelis and Walsh, "Always Valid
Inference", 2017; Robbins's mixture martingale) holds at every look, however many: by Ville's inequality a
mixture likelihood ratio of 1 / alpha is crossed at any time with probability at most alpha under no difference,
so ``promote`` without a named variant, an action taken whenever someone looks, asks for it.
"""

from __future__ import annotations

import bisect
import hashlib
import hmac
import itertools
import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

LEVEL = 0.95
"""Two-sided confidence level of every interval here (and 1 - LEVEL the p-value below which a result counts)."""

_BUCKET_BYTES = 8
_BELOW_ONE = math.nextafter(1.0, 0.0)


def _stats() -> Any:
    """scipy.stats, imported when a report is first computed: the API's answer path imports this module (bucketing,
    the draft) and must not load scipy (tests/api/test_imports.py)."""
    from scipy import stats

    return stats


def _z(level: float) -> float:
    """The standard normal quantile that leaves (1 - level) / 2 in each tail."""
    if not 0 < level < 1:
        raise ValueError(f"level must lie strictly between 0 and 1, not {level}")
    return float(_stats().norm.ppf((1 + level) / 2))


def _rounded(fields: dict[str, Any]) -> dict[str, Any]:
    return {name: round(v, 6) if isinstance(v, float) else v for name, v in fields.items()}


# -- assignment ----------------------------------------------------------------------------------------------
def _fraction(first: bytes) -> float:
    """Big-endian unsigned bytes / 256**len, in [0, 1)."""
    # The true quotient is below 1, but the 2**-54 of digests whose top 54 bits are all ones round up to 1.0 as a
    # double; they take the double just below it, so a bucket is always < 1 and always inside the last variant.
    return min(int.from_bytes(first, "big") / float(1 << (8 * len(first))), _BELOW_ONE)


def bucket(salt: bytes, user_id: int) -> float:
    """[0, 1): the first 8 bytes of HMAC-SHA256(key=salt, msg=str(user_id).encode()) as a big-endian unsigned int
    / 2**64. Deterministic across processes and restarts (no Python hash())."""
    return _fraction(hmac.new(salt, str(user_id).encode(), hashlib.sha256).digest()[:_BUCKET_BYTES])


def variant_of(salt: bytes, user_id: int, shares: Sequence[float]) -> int:
    """The index of the variant the user falls in: shares (positive, any sum) normalised to cumulative bounds; the
    first index whose cumulative bound exceeds bucket(salt, user_id) (the last index if float rounding leaves none)."""
    if not shares or not all(0 < s < math.inf for s in shares):
        raise ValueError(f"shares must be positive and finite, at least one of them, not {list(shares)}")
    cumulative = list(itertools.accumulate(float(s) for s in shares))
    bounds = [c / cumulative[-1] for c in cumulative]  # the last is exactly 1.0
    return min(bisect.bisect_right(bounds, bucket(salt, user_id)), len(shares) - 1)


# -- interleaving --------------------------------------------------------------------------------------------
def team_draft(a: Sequence[int], b: Sequence[int], *, k: int, rng: random.Random) -> tuple[list[int], list[int]]:
    """Team-draft interleaving (Radlinski, Kurup and Joachims, CIKM 2008) of two rankings of item ids, best first.
    Returns (items, teams): at most k distinct items, and for each the team that picked it (0 = a, 1 = b).
    Rounds: while fewer than k items and either ranking has an item not yet picked: the team with fewer picks goes
    first, a coin flip (rng.random() < 0.5 means team a first) when they have picked equally many; each team in turn
    picks its highest-ranked item not already in the list (a team with nothing left passes, and the other keeps
    picking). Per round, both teams pick (if they can and k is not reached), so the first two picks of every round
    are one of each team. The coin is drawn only at the start of a round in which both teams have something left
    to pick (once a team passes there is no order to decide): rng.random() is called once per such round, never
    otherwise."""
    if k < 1:
        raise ValueError(f"k must be at least 1, not {k}")
    rankings = (a, b)
    items: list[int] = []
    teams: list[int] = []
    picked: set[int] = set()
    picks = [0, 0]  # how many items each team has put in the list
    at = [0, 0]  # each ranking's first position not yet known to be picked

    def head(team: int) -> int | None:
        """The team's highest-ranked item not yet in the list (None: nothing left)."""
        ranking = rankings[team]
        while at[team] < len(ranking) and ranking[at[team]] in picked:
            at[team] += 1
        return ranking[at[team]] if at[team] < len(ranking) else None

    # The paper's loop, one pick per iteration: while both teams can pick, their counts are equal at the start of
    # a round and one apart in its middle, so "fewer picks goes, a coin when equal" makes the rounds above. Once a
    # team has nothing left it never has again (items only leave), and the other fills the rest of the k slots.
    while len(items) < k:
        heads = (head(0), head(1))
        if heads[0] is None and heads[1] is None:
            break
        if heads[0] is None or heads[1] is None:
            team = 0 if heads[1] is None else 1
        elif picks[0] != picks[1]:
            team = 0 if picks[0] < picks[1] else 1
        else:
            team = 0 if rng.random() < 0.5 else 1
        item = heads[team]
        assert item is not None
        items.append(item)
        teams.append(team)
        picked.add(item)
        picks[team] += 1
    return items, teams


# -- A/B tests -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Ratio:
    """A rate of sums over units (users), e.g. clicks / impressions, with its delta-method interval clustered by
    unit."""

    value: float  # sum(num) / sum(den); 0.0 when sum(den) == 0
    low: float  # value - z * se, clipped to >= 0
    high: float  # value + z * se (not clipped above: a rate like plays per impression may exceed 1)
    se: float  # standard error
    units: int  # units with den > 0
    numerator: float  # sum(num) over those units
    denominator: float  # sum(den)

    def to_json(self) -> dict[str, Any]:
        return _rounded(asdict(self))


def _units(name: str, first: np.ndarray, second: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two per-unit arrays as float64, refused unless 1-d, of one length, finite and non-negative."""
    x, y = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"{name} needs two 1-D arrays of one length, not shapes {x.shape} and {y.shape}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError(f"{name} needs finite values")
    if (x < 0).any() or (y < 0).any():
        raise ValueError(f"{name} needs non-negative values (sums of counts per unit)")
    return x, y


def ratio(num: np.ndarray, den: np.ndarray, *, level: float = LEVEL) -> Ratio:
    """Per-unit numerators and denominators (1-d, same length; units with den == 0 are dropped first).
    r = sum(num)/sum(den); with n units, mean denominator dbar, d_u = num_u - r * den_u,
    se = sqrt( var(d, ddof=1) / n ) / dbar   (the delta method for a ratio of means; se = 0 when n < 2);
    z = scipy.stats.norm.ppf((1 + level) / 2)."""
    x, y = _units("ratio", num, den)
    z = _z(level)
    shown = y > 0  # a unit that was never exposed says nothing about the rate
    x, y = x[shown], y[shown]  # (n,) each
    n = len(y)
    numerator, denominator = float(x.sum()), float(y.sum())
    if n == 0:
        return Ratio(value=0.0, low=0.0, high=0.0, se=0.0, units=0, numerator=numerator, denominator=0.0)
    value = numerator / denominator
    se = 0.0
    if n >= 2:
        # A linearisation of sum(num)/sum(den) around its value: each unit's residual from the rate; their
        # variance over units (not over impressions) is what makes the interval clustered.
        d = x - value * y  # (n,)
        se = math.sqrt(float(np.var(d, ddof=1)) / n) / (denominator / n)
    return Ratio(value=value, low=max(0.0, value - z * se), high=value + z * se, se=se, units=n,
                 numerator=numerator, denominator=denominator)  # fmt: skip


@dataclass(frozen=True)
class Difference:
    """b - a of two independent Ratios (two variants' users), with its normal interval and two-sided p-value."""

    difference: float  # b.value - a.value
    low: float  # difference - z * se, se = sqrt(a.se**2 + b.se**2)
    high: float  # difference + z * se
    p_value: float  # 2 * (1 - Phi(|diff| / se)); 1.0 when se == 0 and diff == 0; 0.0 when se == 0 and diff != 0
    relative: float | None  # difference / a.value, None when a.value == 0
    level: float  # e.g. 0.95
    units: int = 0  # the fewer of the two sides' units
    min_units: int = 0  # the fewest units a side needs for the difference to count (``MIN_UNITS``)
    always_valid_p: float = 1.0  # ``mixture_p``: valid at every look, however many

    @property
    def significant(self) -> bool:
        """p_value < 1 - level (the interval excludes 0), with at least ``min_units`` units a side: the normal
        interval of a handful of users is no interval (with one user a side, or every user alike, se is 0 and
        any difference would read as certain)."""
        return self.p_value < 1 - self.level and self.units >= self.min_units

    @property
    def always_valid_significant(self) -> bool:
        """always_valid_p < 1 - level, with ``min_units`` a side: significant however often the report was read."""
        return self.always_valid_p < 1 - self.level and self.units >= self.min_units

    def to_json(self) -> dict[str, Any]:
        return {**_rounded(asdict(self)), "significant": self.significant,
                "always_valid_significant": self.always_valid_significant}  # fmt: skip


ANYTIME_TAU = 0.5
"""The A/B mixture's spread (``mixture_p``): the effects it is most sensitive to, as a share of the two variants'
mean rate (0.5: a lift of half the rate). Chosen among 0.05, 0.1, 0.2, 0.5 and 1 on replays of seed against the
default, with users who click like people (``python -m bench.online --repeats 0 --tau-grid --clicks
propensity``): 0.5 was significant within 610 users in the most runs, with 3 % of ties called significant;
reported on ials against the default (BENCHMARKS.md)."""


def mixture_p(diff: float, se: float, *, tau: float) -> float:
    """The always-valid p-value of "no difference" after observing ``diff`` with standard error ``se``: 1 / the
    normal-mixture likelihood ratio, Lambda = sqrt(V / (V + tau^2)) exp(diff^2 tau^2 / (2 V (V + tau^2))), V =
    se^2 (the mixing distribution N(0, tau^2) over the true difference), capped at 1. With no spread at all (se
    0), as ``difference``'s p-value: 0.0 for any difference, 1.0 for none; 1.0 when tau is 0."""
    if se <= 0:
        return 0.0 if diff != 0 else 1.0
    if tau <= 0:
        return 1.0
    v, t2 = se * se, tau * tau
    log_ratio = 0.5 * math.log(v / (v + t2)) + diff * diff * t2 / (2 * v * (v + t2))
    return math.exp(-log_ratio) if log_ratio > 0 else 1.0


def sign_mixture_p(wins_a: int, wins_b: int) -> float:
    """The always-valid p-value of "each side wins a user with probability 1/2": 1 / the likelihood ratio of a
    uniform mixture over that probability against 1/2, Lambda = 2^n wins_a! wins_b! / (n + 1)!, n = wins_a +
    wins_b, capped at 1 (no parameter to choose: the uniform prior covers both directions)."""
    n = wins_a + wins_b
    log_ratio = n * math.log(2) + math.lgamma(wins_a + 1) + math.lgamma(wins_b + 1) - math.lgamma(n + 2)
    return math.exp(-log_ratio) if log_ratio > 0 else 1.0


MIN_UNITS = 20
"""Units (users) each side of a difference needs before it can be significant: the delta method's normal interval
is a large-sample one, and below some tens of users it is far too narrow."""


def difference(
    a: Ratio, b: Ratio, *, level: float = LEVEL, min_units: int = MIN_UNITS, tau: float = ANYTIME_TAU
) -> Difference:  # fmt: skip
    """b - a of two Ratios over disjoint users (two variants'), with se = sqrt(a.se**2 + b.se**2), the normal
    interval at ``level`` and the two-sided p-value of no difference; significant only with ``min_units`` units
    a side; and the always-valid p-value (``mixture_p``, its spread ``tau`` times the two rates' mean)."""
    z = _z(level)
    diff = b.value - a.value
    se = math.hypot(a.se, b.se)
    # With no spread at all, any difference is certain and none is no evidence. sf(x) is 1 - cdf(x) without the
    # cancellation that rounds a small p to 0.
    p_value = float(2 * _stats().norm.sf(abs(diff) / se)) if se > 0 else float(diff == 0)
    return Difference(difference=diff, low=diff - z * se, high=diff + z * se, p_value=min(1.0, p_value),
                      relative=diff / a.value if a.value != 0 else None, level=level,
                      units=min(a.units, b.units), min_units=min_units,
                      always_valid_p=mixture_p(diff, se, tau=tau * (a.value + b.value) / 2))  # fmt: skip


# -- interleaving outcomes -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Preference:
    """An interleaving's outcome over units (users): a unit whose clicks credited team b more than team a is a win
    for b."""

    wins_a: int  # units whose clicks credited team a more
    wins_b: int  # units whose clicks credited team b more
    ties: int  # units with clicks, equally credited (units with no click are not counted at all)
    preference: float  # (wins_b - wins_a) / (wins_a + wins_b + ties), 0.0 when no unit; > 0 means b is preferred
    p_value: float  # two-sided exact binomial sign test of wins_b among wins_a + wins_b at 0.5; 1.0 when no wins
    level: float  # e.g. 0.95
    always_valid_p: float = 1.0  # ``sign_mixture_p``: valid at every look, however many

    @property
    def significant(self) -> bool:
        """p_value < 1 - level."""
        return self.p_value < 1 - self.level

    @property
    def always_valid_significant(self) -> bool:
        """always_valid_p < 1 - level: significant however often the report was read."""
        return self.always_valid_p < 1 - self.level

    def to_json(self) -> dict[str, Any]:
        return {**_rounded(asdict(self)), "significant": self.significant,
                "always_valid_significant": self.always_valid_significant}  # fmt: skip


def preference(credit_a: np.ndarray, credit_b: np.ndarray, *, level: float = LEVEL) -> Preference:
    """Per-unit clicks credited to each team (same length)."""
    ca, cb = _units("preference", credit_a, credit_b)
    if not 0 < level < 1:
        raise ValueError(f"level must lie strictly between 0 and 1, not {level}")
    wins_a, wins_b = int((ca > cb).sum()), int((cb > ca).sum())
    ties = int(((ca == cb) & (ca > 0)).sum())
    counted = wins_a + wins_b + ties
    # Ties carry no sign: the test asks only whether, among users who preferred one side, b's share is 1/2.
    wins = wins_a + wins_b
    p_value = float(_stats().binomtest(wins_b, wins, 0.5).pvalue) if wins else 1.0
    return Preference(wins_a=wins_a, wins_b=wins_b, ties=ties,
                      preference=(wins_b - wins_a) / counted if counted else 0.0, p_value=min(1.0, p_value),
                      level=level, always_valid_p=sign_mixture_p(wins_a, wins_b))  # fmt: skip
