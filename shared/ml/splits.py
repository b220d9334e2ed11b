"""Where each rating goes in an evaluation: the training part, the test part, the new-user cohort, or nowhere.

One function, ``assign``, labels every rating of a dataset; the evaluation's ``Split`` (shared/ml/evaluate.py)
and the stored training dataset (shared/logic/scoring.py) are both built from its labels, so they cannot
disagree. Data flow:

    ratings (user, timestamp) as parallel (r,) arrays, any order
      └─ assign(kind, min_ratings, train_fraction, new_user_share) ──> Parts
           label (r,) int8   TRAIN | TEST | NEW_USER | DROPPED
           cut   per training user: the time from which their ratings (and tags) belong to the test period

The rules:

- **Kept users**: those with at least ``min_ratings`` ratings; the others' ratings are DROPPED.
- **The new-user cohort**: a share ``new_user_share`` of the kept users, drawn by a hash of the user id (the
  same users whatever the dataset's order or size), removed before training: every rating of theirs is
  NEW_USER. The evaluation brings them back as new users (``NewUsers``).
- **At most ``max_users``** of the other kept users (0: all), drawn by another hash; the rest are DROPPED, and
  so are the cohort's users beyond max_users x share / (1 - share), so that the cohort keeps its proportion to
  them. A validation split at scale samples its users so (``Protocol.validation``): every setting of every
  grid is fitted on the sample's training part and scored on its validation part and its cohort.
- **kind "temporal"** (per user): each other kept user's ratings sorted by time (ties in input order); the first
  round(train_fraction n) are TRAIN, the rest TEST; the user's cut is the time of their first TEST rating.
- **kind "global"** (one cut time for everyone, what a deployed model faces): the kept users' ratings sorted by
  time (ties in input order); the first round(train_fraction r) are the training period, the rest the test
  period; everyone's cut is the time of the test period's first rating. A user with no rating in the training
  period is new in the test period: not a training user, DROPPED here (the new-user slice measures new users).

A validation split is the same function applied to a training part (``Protocol.validation``): its last
``1 - train_fraction`` become the validation part.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shared.ml.protocol import SPLITS

TRAIN, TEST, NEW_USER, DROPPED = 0, 1, 2, 3
"""A rating's label in ``Parts.label``."""
COHORT_SALT = 0x5EED_C0C0_A1E5_0001
"""Mixed into the hash that draws the new-user cohort: a fixed draw, the same in every run."""
SAMPLE_SALT = 0x5EED_5A3B_1E00_0002
"""Mixed into the hash that draws ``max_users`` users (another draw than the cohort's)."""
EVALUATED_SALT = 0x5EED_5A3B_1E00_0003
"""Mixed into the hash that draws the evaluated users of a capped test part (``sample``)."""
NEW_USER_RATINGS = (1, 3, 10)
"""The new-user slice: a cohort user's first N ratings are their history, their later ones the test."""


@dataclass(frozen=True)
class Parts:
    """Every rating's label, and the cut of each training user (``cut_users`` ascending, ``cut_times`` beside)."""

    label: np.ndarray  # (r,) int8 TRAIN | TEST | NEW_USER | DROPPED
    cut_users: np.ndarray  # (t,) user values with at least one TRAIN rating, ascending
    cut_times: np.ndarray  # (t,) int64: their ratings and tags at or after this time are not training's
    new_in_test: int  # kept users left out of a global split's training period: all their ratings are later

    def counts(self) -> dict[str, int]:
        names = ("train", "test", "new_user", "dropped")
        return {n: int((self.label == v).sum()) for n, v in zip(names, (TRAIN, TEST, NEW_USER, DROPPED), strict=True)}


def in_cohort(user_values: np.ndarray, share: float, cohort_from: float = 0.0) -> np.ndarray:
    """(u,) bool: the users of the new-user cohort, a ``share`` of them drawn by a hash (splitmix64) of the user
    value: a user's draw depends on nothing else. The draws in [cohort_from, cohort_from + share (1 -
    cohort_from)): a validation split's cohort is drawn from the draws its test split's cohort left
    (``Protocol.validation``: from the test's share on), a ``share`` of them."""
    if share <= 0:
        return np.zeros(len(user_values), dtype=bool)
    draw = hashed(user_values, COHORT_SALT)
    return np.asarray((draw >= cohort_from) & (draw < cohort_from + share * (1.0 - cohort_from)), dtype=bool)


def sample(user_values: np.ndarray, at_most: int) -> np.ndarray:
    """(m,) ascending positions of the ``at_most`` users of ``user_values`` with the lowest draws
    (``EVALUATED_SALT``); every position when ``at_most`` is 0 or they are fewer. A user's draw depends on their
    value alone, so a larger sample holds a smaller one."""
    n = len(user_values)
    if at_most <= 0 or n <= at_most:
        return np.arange(n)
    return np.sort(np.argsort(hashed(user_values, EVALUATED_SALT), kind="stable")[:at_most])


def hashed(user_values: np.ndarray, salt: int) -> np.ndarray:
    """(u,) float64 in [0, 1): splitmix64 of each user value and ``salt``, a fixed draw per user."""
    z = np.asarray(user_values, dtype=np.int64).astype(np.uint64) ^ np.uint64(salt)
    with np.errstate(over="ignore"):
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return np.asarray((z >> np.uint64(11)).astype(np.float64) / float(1 << 53))


def assign(
    user: np.ndarray,
    timestamp: np.ndarray,
    *,
    kind: str = "temporal",
    min_ratings: int = 10,
    train_fraction: float = 0.8,
    new_user_share: float = 0.0,
    cohort_from: float = 0.0,
    max_users: int = 0,
) -> Parts:
    """Label ratings given as parallel (r,) arrays by the rules of the module docstring."""
    if kind not in SPLITS:
        raise ValueError(f"unknown split {kind!r}; known: {', '.join(SPLITS)}")
    user, timestamp = np.asarray(user), np.asarray(timestamp, dtype=np.int64)
    r = len(user)
    # By user, then time, then input order: one lexsort.
    order = np.lexsort((np.arange(r), timestamp, user))
    users_sorted = user[order]
    user_values, starts, counts = np.unique(users_sorted, return_index=True, return_counts=True)
    owner = np.empty(r, dtype=np.int64)
    owner[order] = np.repeat(np.arange(len(user_values)), counts)  # (r,) position of each rating's user
    kept = counts >= min_ratings  # (u,)
    cohort = kept & in_cohort(user_values, new_user_share, cohort_from)
    regular = kept & ~cohort
    if 0 < max_users < int(regular.sum()):  # a hashed sample of them: the max_users lowest draws
        regular = _lowest_draws(user_values, regular, max_users)
        # ... and of the cohort, in the same proportion to them as the share asks for
        cohort = _lowest_draws(user_values, cohort, round(max_users * new_user_share / (1.0 - new_user_share)))
    if kind == "temporal":
        early = _temporal_early(order, starts, counts, train_fraction)
    else:  # the ratings of kept users, cohort included, fix the test period
        early, cut_time = _global_early(timestamp, kept[owner], train_fraction)
    has_train = np.bincount(owner[early], minlength=len(user_values)) > 0  # (u,)
    trained = regular & has_train  # a user with no rating in the training period is new in the test period
    mine = trained[owner]
    label = np.full(r, DROPPED, dtype=np.int8)
    label[cohort[owner]] = NEW_USER
    label[mine & early] = TRAIN
    label[mine & ~early] = TEST
    cut_users = user_values[trained]
    if kind == "temporal":  # each user's cut: their first test rating's time
        first_test = np.full(len(user_values), np.iinfo(np.int64).max, dtype=np.int64)
        test = label == TEST
        np.minimum.at(first_test, owner[test], timestamp[test])
        cut_times = first_test[trained]
    else:
        cut_times = np.full(len(cut_users), cut_time, dtype=np.int64)
    new_in_test = int((regular & ~has_train).sum())
    return Parts(label=label, cut_users=cut_users, cut_times=cut_times.astype(np.int64), new_in_test=new_in_test)


def _lowest_draws(user_values: np.ndarray, among: np.ndarray, at_most: int) -> np.ndarray:
    """(u,) bool: the ``at_most`` users of ``among`` with the lowest ``SAMPLE_SALT`` draws (all of them if fewer)."""
    if int(among.sum()) <= at_most:
        return among
    draw = np.where(among, hashed(user_values, SAMPLE_SALT), np.inf)
    out = np.zeros_like(among)
    out[np.argsort(draw, kind="stable")[:at_most]] = True
    return out


def _temporal_early(order: np.ndarray, starts: np.ndarray, counts: np.ndarray, train_fraction: float) -> np.ndarray:
    """(r,) bool: the first round(train_fraction n) of each user's ratings (``order``: by user, time, input)."""
    r = len(order)
    rank = np.empty(r, dtype=np.int64)
    rank[order] = np.arange(r) - np.repeat(starts, counts)  # (r,) place in the user's timeline
    n_train = np.array([round(train_fraction * c) for c in counts.tolist()], dtype=np.int64)  # (u,)
    owner_sorted = np.repeat(np.arange(len(counts)), counts)
    limit = np.empty(r, dtype=np.int64)
    limit[order] = n_train[owner_sorted]
    return np.asarray(rank < limit, dtype=bool)


def _global_early(timestamp: np.ndarray, counted: np.ndarray, train_fraction: float) -> tuple[np.ndarray, int]:
    """((r,) bool: the ratings of the training period, its cut time): of the ``counted`` ratings by time (ties in
    input order), the first round(train_fraction r) are the training period; the cut is the next one's time."""
    r = len(timestamp)
    in_time = np.lexsort((np.arange(r), timestamp))  # (r,) every rating by time, ties in input order
    period = counted[in_time]
    n_train = round(train_fraction * int(period.sum()))
    position = np.cumsum(period) - 1  # place among the counted ratings, in time order
    early = np.zeros(r, dtype=bool)
    early[in_time] = period & (position < n_train)
    later = timestamp[in_time][period & (position >= n_train)]
    return early, int(later[0]) if len(later) else int(np.iinfo(np.int64).max)
