"""Named model recipes: the pipeline options that make one kind of model, from triplets to user profiles.

    POST /v1/pipelines {"recipe": "hybrid", ...}   ──> pipeline options = recipe's options, then the body's
    POST /v1/jobs/evaluate {"recipes": [...]}      ──> one pipeline per recipe on the training part, scored

A recipe fixes every stage's choices:

- **triplets**: ``source`` "descriptors" (the notebook's miner, with its ``negatives`` strategy) or "ratings"
  (co-liked positives and popularity-weighted negatives, ``liked_at`` and ``positives``; shared/ml/coliked.py);
- **model**: ``architecture`` "linear" (the notebook: one linear layer over the encoder's vectors), "hybrid"
  (shared/ml/hybrid.py: a learned per-movie embedding from what users liked, and a linear content tower
  trained on the triplets to place movies nobody rated in the same space), "ials" (the same with implicit
  ALS's item factors, served by inner product, a user's query their fold-in) or "sequence" (shared/ml/sequence.py:
  SASRec, self-attention over each user's last ratings in time order, trained on the gpu queue with a full
  softmax; movie vectors a content tower plus a learned per-movie residual, served by inner product, a user's
  query the network's last state);
- **profile**: how a user's ratings become a query (shared/ml/recommend.py): ``profile`` "rating" (the
  notebook: weights rating / 5, mean taken in the encoder's space, then projected) or "centred" (weights
  1 + (rating - the user's mean) / 2: a movie rated 2 points under the user's mean weighs 0 and anything
  lower pushes the query away), ``recency_days`` (a half-life: 0 = off), and a light user's popularity prior
  (``prior`` and ``prior_until``, chosen on validation from ``SERVE_GRIDS``).

``seed`` is the notebook's method as the service ran it before recipes existed, and reproduces those figures.
The default, ``auto``, is chosen per dataset: the recipes of ``AUTO_RECIPES`` over their grids (and serve-time
settings) on a validation split of the pipeline's own dataset, the winner trained on all of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shared.errors import InvalidRequest


@dataclass(frozen=True)
class Recipe:
    name: str
    summary: str
    options: dict[str, Any] = field(default_factory=dict)
    """Pipeline options (the names of ``POST /v1/pipelines``' body)."""


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe(
            "seed",
            "the notebook: descriptor triplets (uniform-min negatives), CLS pooling, one linear layer to 50-d, "
            "profile = rating/5-weighted mean",
            {
                "source": "descriptors",
                "negatives": "uniform-min",
                "pooling": "cls",
                "architecture": "linear",
                "profile": "rating",
                "epochs": 10,
                "hidden_dim": 50,
                "margin": 0.3,
                "lr": 0.01,
                "batch_size": 32,
            },
        ),
        Recipe(
            "hybrid",
            "co-liked triplets (liked >= 3.5, 10 positives per movie, popularity negatives); per-movie embedding "
            "from the liked matrix (128-d) plus a linear content tower for unrated movies; centred profile",
            {
                "source": "ratings",
                "liked_at": 3.5,
                "positives": 10,
                "pooling": "cls",
                "architecture": "hybrid",
                "profile": "centred",
                "epochs": 5,
                "hidden_dim": 128,
                "margin": 0.3,
                "lr": 0.003,
                "batch_size": 256,
            },
        ),
        Recipe(
            "ials",
            "implicit ALS factors (every rating a positive, confidence 1 + alpha) as movie vectors in an "
            "inner-product index, a user's query their fold-in solved at query time; a linear content tower on "
            "co-liked triplets places movies nobody rated",
            {
                "source": "ratings",
                "liked_at": 3.5,
                "positives": 10,
                "pooling": "cls",
                "architecture": "ials",
                "profile": "rating",
                "epochs": 5,
                "hidden_dim": 64,
                "regularization": 1.0,
                "alpha": 1.0,
                "margin": 0.3,
                "lr": 0.003,
                "batch_size": 256,
            },
        ),
        Recipe(
            "sequence",
            "SASRec: 2 self-attention blocks over each user's last 50 ratings in time order, next-movie full-softmax "
            "cross-entropy; movie vectors a linear content tower plus a learned per-movie residual (cold movies: the "
            "tower alone), served by inner product, a user's query the network's last state",
            {
                "source": "ratings",
                "liked_at": 3.5,
                "positives": 10,
                "pooling": "cls",
                "architecture": "sequence",
                "profile": "rating",
                "epochs": 20,
                "hidden_dim": 64,
                "layers": 2,
                "dropout": 0.2,
                "margin": 0.3,
                "lr": 0.001,
                "batch_size": 128,
            },
        ),
    )
}

GRIDS: dict[str, dict[str, tuple[Any, ...]]] = {
    "seed": {},  # the notebook's method as it ran: a fixed reference, not tuned
    "hybrid": {"hidden_dim": (64, 128), "liked_at": (3.5, 4.0)},
    # regularization 1, alpha 1: what the iALS baseline's 12-setting grid chose on ml-latest-small. Alpha (1, 10)
    # was tried at the notebook's scale, where the iALS row chose 10: validation still chose 1 for the recipe
    # (its light-user prior), and the job took 706 s against 643 (BENCHMARKS.md, session 19).
    "ials": {"hidden_dim": (64, 128)},
    # SASRec's own two dropout rates (Kang and McAuley 2018): 0.2 for its dense MovieLens-1M, 0.5 for sparse data
    "sequence": {"dropout": (0.2, 0.5)},
}
"""Each recipe's tuning grid: the options an evaluation's validation split chooses among (every combination)."""

LIGHT_USER_PRIORS: list[dict[str, Any]] = [{}, {"prior": 1.0, "prior_until": 30.0}, {"prior": 3.0, "prior_until": 30.0}]
"""Off, or a prior of 1 or 3 fading out at 30 ratings. Each setting ranks every light user again, at the
notebook's scale most of the validation cohort and many of its users: a grid of 7 (0.3, 1, 3 by 10, 30) made
validation there three times as long. On ml-latest-small, validation chose 3 and 30 for hybrid in both splits,
and 1 or 3 and 30 for ials, from the grid of 7."""
COLD_BOOSTS: list[dict[str, Any]] = [{}, {"cold_boost": 0.1}, {"cold_boost": 0.3}]
"""Off, or a movie nobody rated gets 0.1 or 0.3 of the best score a movie could have added to its own
(shared/ml/recommend.py ``cold_bonus``): a new film reaches an answer when its content scores within that of
the best rated ones."""
SERVE_SETTINGS: list[dict[str, Any]] = [{**prior, **cold} for prior in LIGHT_USER_PRIORS for cold in COLD_BOOSTS]
"""Every light-user prior with every cold boost."""
SERVE_GRIDS: dict[str, list[dict[str, Any]]] = {
    "hybrid": SERVE_SETTINGS,
    "ials": SERVE_SETTINGS,
    "sequence": SERVE_SETTINGS,
}
"""Each recipe's serve-time settings that validation chooses among beside its grid: the light-user popularity
prior and the cold movies' boost (shared/ml/recommend.py), {} = both off. They change how a trained model
ranks, not the model, so every one of them scores each trained setting of the grid (no training of its own)."""

AUTO = "auto"
"""The recipe chosen per dataset: a pipeline with it first tunes ``AUTO_RECIPES`` on a validation split of its
dataset (shared/logic/pipeline.py, stage ``choose``), then trains the winner at its chosen setting on all of it."""
AUTO_RECIPES = ("hybrid", "ials")
"""What ``auto`` chooses among: not ``seed``, the notebook's method kept as a fixed reference (below every tuned
row of every table), nor ``sequence``, last of the three on validation in both of ml-latest-small's splits and
minutes of CPU training per candidate (BENCHMARKS.md, session 15); both stay one option away."""
DEFAULT_RECIPE = AUTO
"""The recipe of ``/v1/pipelines`` and ``movierec demo`` when none is named."""
FALLBACK_RECIPE = "hybrid"
"""What ``auto`` trains when its dataset cannot be split for validation (nobody to evaluate, or no timestamps):
the recipe that led the last tuned table (BENCHMARKS.md), its recipe options as they are, the reason recorded."""


def grid_points(grid: dict[str, tuple[Any, ...]]) -> list[dict[str, Any]]:
    """Every combination of a grid's values, the last name varying fastest ([{}] for an empty grid)."""
    points: list[dict[str, Any]] = [{}]
    for name, values in grid.items():
        points = [{**p, name: v} for p in points for v in values]
    return points


def variant_label(name: str, options: dict[str, Any]) -> str:
    """A recipe or baseline at some setting, as the table names it: ``hybrid hidden_dim=64 liked_at=3.5``."""
    return " ".join([name, *(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in options.items())])


def recipe_options(name: str | None, overrides: dict[str, Any]) -> dict[str, Any]:
    """The pipeline options of recipe ``name`` (default ``DEFAULT_RECIPE``), then ``overrides`` (the values a
    client gave; None means not given)."""
    name = name or DEFAULT_RECIPE
    given = {k: v for k, v in overrides.items() if v is not None}
    if name == AUTO:  # not chosen yet: only the client's values (ingest needs no recipe)
        return {**given, "recipe": AUTO}
    if name not in RECIPES:
        raise InvalidRequest(f"unknown recipe {name!r}; known: {', '.join([AUTO, *RECIPES])}")
    return {**RECIPES[name].options, **given, "recipe": name}
