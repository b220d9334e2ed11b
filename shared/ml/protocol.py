"""The evaluation's protocol and options (issues #11, #24): who is kept, where each user's timeline is cut, what counts
as relevant, top k, and what a job scores by default. Plain values: the API validates requests with them without
loading the scoring code (shared/ml/evaluate.py, shared/logic/scoring.py).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from typing import Any

from shared.ml.recipes import RECIPES

SPLITS = ("temporal", "global")
"""The splits an evaluation can make (shared/ml/splits.py)."""
DEFAULT_SPLIT = "temporal"
"""Each user's timeline cut at its own point; "global" cuts everyone's at one time (shared/ml/splits.py)."""
DEFAULT_MIN_RATINGS = 10
DEFAULT_TRAIN_FRACTION = 0.8
DEFAULT_RELEVANT_AT = 4.0
DEFAULT_K = 10
DEFAULT_NEW_USER_SHARE = 0.15
"""The share of users held out as the new-user cohort (removed before training, brought back as new users)."""
VALIDATION_MIN_RATINGS = 1
"""A validation split keeps every user of the training part (the test split's rule already chose them)..."""
VALIDATION_MAX_USERS = 10_000
"""... up to this many, a hashed sample beyond: every setting of every grid is fitted and scored on validation,
so its cost grows with the users (ml-latest-small's 610 are all kept). 10,000 users put the standard error of a
setting's validation NDCG@10 near 0.001, below the gaps that decide a grid, and keep the 62 settings' grid at the
notebook's scale to minutes on 2 cores (20,000 took 7 min 15 s, BENCHMARKS.md)."""

BASELINES = ("random", "most-popular", "item-kNN", "EASE", "RP3beta", "iALS")
"""The baselines an evaluation can score, by their names in the table."""


@dataclass(frozen=True)
class Protocol:
    """Who is kept, how ratings are split by time, what counts as relevant, top k, who is a new user."""

    split: str = DEFAULT_SPLIT
    min_ratings: int = DEFAULT_MIN_RATINGS
    train_fraction: float = DEFAULT_TRAIN_FRACTION
    relevant_at: float = DEFAULT_RELEVANT_AT
    k: int = DEFAULT_K
    new_user_share: float = DEFAULT_NEW_USER_SHARE
    max_users: int = 0
    """At most this many training users, a hashed sample (0: all): a validation split's, at scale."""
    cohort_from: float = 0.0
    """Where the cohort's hashed draws begin (``splits.in_cohort``): 0 for a test split; a validation split's
    begin at its test split's share, the draws its test cohort left."""
    max_evaluated: int = 0
    """At most this many evaluated users in the test part and in each new-user slice, a hashed sample (0: all);
    the training part is the same whatever it is (ranking every user by every row is most of a test scoring's
    time at the notebook's scale)."""

    @classmethod
    def of(cls, params: dict[str, Any]) -> Protocol:
        """From job params (absent ones take the defaults)."""
        return cls(
            split=str(params.get("split", DEFAULT_SPLIT)),
            min_ratings=int(params.get("min_ratings", DEFAULT_MIN_RATINGS)),
            train_fraction=float(params.get("train_fraction", DEFAULT_TRAIN_FRACTION)),
            relevant_at=float(params.get("relevant_at", DEFAULT_RELEVANT_AT)),
            k=int(params.get("k", DEFAULT_K)),
            new_user_share=float(params.get("new_user_share", DEFAULT_NEW_USER_SHARE)),
            max_users=int(params.get("max_users", 0)),
            cohort_from=float(params.get("cohort_from", 0.0)),
            max_evaluated=int(params.get("max_evaluated", 0)),
        )

    def describe(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def training(self) -> dict[str, Any]:
        """What decides the training part (relevant_at and k only decide how the test part is scored)."""
        training = {"split": self.split, "min_ratings": self.min_ratings, "train_fraction": self.train_fraction,
                    "new_user_share": self.new_user_share, "max_users": self.max_users}  # fmt: skip
        return training | ({"cohort_from": self.cohort_from} if self.cohort_from else {})

    def validation(self) -> Protocol:
        """The protocol that cuts a training part made by this one into its validation split: the same kind of
        cut at the same fraction, every user kept up to ``VALIDATION_MAX_USERS`` (a hashed sample beyond), and
        the same share of them held out as a cohort of new users (what a light user's settings are chosen on)."""
        return replace(self, min_ratings=VALIDATION_MIN_RATINGS, max_users=VALIDATION_MAX_USERS, max_evaluated=0,
                       cohort_from=self.cohort_from + self.new_user_share * (1.0 - self.cohort_from))  # fmt: skip


def choosing() -> Protocol:
    """The protocol that cuts a whole dataset into a validation split to choose a recipe on (the ``auto`` recipe):
    every user kept up to ``VALIDATION_MAX_USERS``, each one's last 20 % the validation part, a share of them
    held out as new users (nothing was held out before it, so its cohort draws from 0)."""
    return Protocol(min_ratings=VALIDATION_MIN_RATINGS, max_users=VALIDATION_MAX_USERS)


def training_dataset_id(source: str, protocol: Protocol) -> str:
    """The derived training dataset's id: a hash of its source and the protocol values that cut it."""
    key = json.dumps({"from": source, "protocol": protocol.training, "part": "train"}, sort_keys=True)
    return "ds-" + hashlib.blake2b(key.encode(), digest_size=12).hexdigest()


DEFAULT_SEED = 42
DEFAULT_SHARD_USERS = 200
"""Evaluated users a scoring shard ranks: its (b, n_movies) float32 scores are 200 x 58k x 4 = 46 MB at most."""


def recipes_of(params: dict[str, Any]) -> list[str]:
    return list(params["recipes"]) if params.get("recipes") is not None else list(RECIPES)


def baselines_of(params: dict[str, Any]) -> list[str]:
    return list(params["baselines"]) if params.get("baselines") is not None else list(BASELINES)
