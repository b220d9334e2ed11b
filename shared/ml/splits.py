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


def in_cohort(user_values: np.ndarray, share: float) -> np.ndarray:
    """(u,) bool: the users of the new-user cohort, a ``share`` of them drawn by a hash (splitmix64) of the user
    value: a user's draw depends on nothing else."""
    if share <= 0:
        return np.zeros(len(user_values), dtype=bool)
    z = np.asarray(user_values, dtype=np.int64).astype(np.uint64) ^ np.uint64(COHORT_SALT)
    with np.errstate(over="ignore"):
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    uniform = (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)  # (u,) in [0, 1)
    return np.asarray(uniform < share, dtype=bool)


def assign(
    user: np.ndarray,
    timestamp: np.ndarray,
    *,
    kind: str = "temporal",
    min_ratings: int = 10,
    train_fraction: float = 0.8,
    new_user_share: float = 0.0,
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
    cohort = kept & in_cohort(user_values, new_user_share)
    regular = kept & ~cohort
    label = np.full(r, DROPPED, dtype=np.int8)
    label[cohort[owner]] = NEW_USER
    if kind == "temporal":
        rank = np.empty(r, dtype=np.int64)
        rank[order] = np.arange(r) - np.repeat(starts, counts)  # (r,) place in the user's timeline
        n_train = np.array([round(train_fraction * c) for c in counts.tolist()], dtype=np.int64)  # (u,)
        mine = regular[owner]
        is_train = rank < n_train[owner]
        label[mine & is_train] = TRAIN
        label[mine & ~is_train] = TEST
        new_in_test = 0
        first_test = np.full(len(user_values), np.iinfo(np.int64).max, dtype=np.int64)
        test = label == TEST
        np.minimum.at(first_test, owner[test], timestamp[test])
        trained = regular & (n_train > 0)
        cut_users, cut_times = user_values[trained], first_test[trained]
    else:
        in_time = np.lexsort((np.arange(r), timestamp))  # (r,) every rating by time, ties in input order
        period = kept[owner][in_time]  # the ratings of kept users, cohort included, fix the test period
        n_period = int(period.sum())
        period_train = round(train_fraction * n_period)
        position = np.cumsum(period) - 1  # (r,) place among kept users' ratings, in time order
        early = np.zeros(r, dtype=bool)
        early[in_time] = period & (position < period_train)
        later_times = timestamp[in_time][period & (position >= period_train)]
        cut_time = int(later_times[0]) if len(later_times) else int(np.iinfo(np.int64).max)
        has_train = np.bincount(owner[early], minlength=len(user_values)) > 0  # (u,)
        trained = regular & has_train
        mine = trained[owner]
        label[mine & early] = TRAIN
        label[mine & ~early] = TEST
        new_in_test = int((regular & ~has_train).sum())
        cut_users = user_values[trained]
        cut_times = np.full(len(cut_users), cut_time, dtype=np.int64)
    return Parts(label=label, cut_users=cut_users, cut_times=cut_times.astype(np.int64), new_in_test=new_in_test)
