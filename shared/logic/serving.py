"""The model a worker serves, loaded from the stores, and one recommendation answered with it.

    job params ──> load_serving(version) ──> ServingModel (shared/ml/recommend.py) ──> recommend ──> answer
                   once per process and version;      keywords encoded with the model's own encoder and
                   the previous version kept beside it pooling, through the vector cache; a user's
                                                      feedback read fresh (feedback_for: one round trip)
    evaluation job ──> version_scorer(version) ──> VersionScorer.score: the same profiles, exact cosine (a light
                                                   user's plus the popularity prior, as served)

Movies of equal score (the same descriptors give the same vector) are answered most rated first: the index is
loaded with each movie's ratings as its tie order (``MovieIndex.with_ties``), by the single answer and the
batch alike. A loaded version is answered without a look at Redis: a version's weights, embeddings and dataset never
change, and neither does the index it was loaded with (a rebuilt index is seen by processes that load later).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from shared.errors import Conflict, NotFound
from shared.infra.keys import dataset_artifact
from shared.infra.process import per_process
from shared.logic.encoding import encode_cached
from shared.logic.online import interleaved, stamped
from shared.logic.services import Services
from shared.ml.index import IndexParams, MovieIndex
from shared.ml.recommend import (
    Layers,
    Profile,
    ServingModel,
    UserRatings,
    cold_bonus,
    inner_layers,
    popularity_prior,
    profile_queries,
    profile_weights,
    recommend,
    vector_scale,
)
from shared.ml.sequence import SequenceNet
from shared.store.artifacts import ArtifactStore
from shared.store.datasets import load_ratings
from shared.store.models import ModelStore

if TYPE_CHECKING:
    import scipy.sparse as sp

SERVED_VERSIONS = 3
"""Versions a process keeps loaded: the one it serves and the one before (a rollback, a hot swap), or the two of an
interleaving beside the active one."""


def network(state: dict[str, np.ndarray]) -> dict[str, Any]:
    """The trained network's arrays as ServingModel and VersionScorer take them: weight, bias, inner layers, an
    ials model's Y^T Y (its users' fold-in) and a sequence model's network (its users' queries)."""
    return {
        "weight": state["proj.weight"].astype(np.float32),
        "bias": state["proj.bias"].astype(np.float32),
        "inner": inner_layers(state),
        "gram": state["fold_in.gram"].astype(np.float64) if "fold_in.gram" in state else None,
        "sequence": SequenceNet.from_state(state),
    }


@per_process(maxsize=SERVED_VERSIONS)
def load_serving(artifacts: ArtifactStore, models: ModelStore, version: str) -> ServingModel:
    """The model version ready to serve, loaded once per process."""
    from safetensors.numpy import load

    record = models.get(version)
    if record is None:
        raise Conflict(f"model {version!r} no longer exists")
    weights = load(artifacts.get_bytes(record["artifacts"]["weights"]))

    def part(name: str) -> str:
        return dataset_artifact(record["dataset"], name)

    vocabulary = artifacts.get_json(part("vocabulary"))
    indptr, indices = artifacts.get_array(part("desc_indptr")), artifacts.get_array(part("desc_indices"))
    profile = Profile.of(record.get("config", {}))
    ratings = load_ratings(artifacts, record["dataset"], timestamps=profile.timed)
    ties = np.bincount(ratings.movie_index, minlength=len(indptr) - 1)
    index = load_index(artifacts, record).with_ties(ties).with_scan()
    return ServingModel(
        version=version,
        record=record,
        index=index,
        **network(weights),
        raw=artifacts.get_array(record["artifacts"]["input_embeddings"]),
        embeddings=artifacts.get_array(record["artifacts"]["embeddings"]),
        movie_ids=artifacts.get_array(part("movie_ids")),
        titles=artifacts.get_json(part("titles")),
        descriptors=[[vocabulary[j] for j in indices[indptr[i] : indptr[i + 1]]] for i in range(len(indptr) - 1)],
        vocabulary=vocabulary,
        desc_indptr=indptr.astype(np.int64),
        desc_indices=indices,
        user_ids=ratings.user_ids,
        ratings_indptr=ratings.indptr,
        ratings_movie=ratings.movie_index,
        ratings_value=ratings.values,
        ratings_time=ratings.timestamps,
    )


def load_index(artifacts: ArtifactStore, record: dict[str, Any]) -> MovieIndex:
    """A model version's index (its bytes checked against their sha256)."""
    index_meta = record.get("index")
    if index_meta is None:
        raise Conflict(f"model {record['version']!r} has no index")
    return MovieIndex.from_bytes(
        artifacts.get_bytes(index_meta["artifact"]),
        sha256=index_meta["sha256"],
        group=artifacts.get_array(index_meta["group_artifact"]),
        dim=index_meta["dim"],
        params=IndexParams(**index_meta["params"]),
    )


@dataclass(frozen=True)
class VersionScorer:
    """Scores every movie for a batch of users the way the service would rank them (exact cosine over the
    model's movie vectors, not the index's approximate search): the evaluation job's view of a model."""

    profile: Profile
    raw: np.ndarray  # (n, d)
    embeddings: np.ndarray  # (n, hidden) unit rows
    weight: np.ndarray
    bias: np.ndarray
    popularity: np.ndarray  # (n,) the popularity prior of the model's dataset (``popularity_prior``)
    inner: Layers = ()
    gram: np.ndarray | None = None
    sequence: SequenceNet | None = None

    def score(
        self, ratings: sp.csr_matrix, timestamps: sp.csr_matrix | None, *, serve: dict[str, Any] | None = None,
        queries: np.ndarray | None = None,
    ) -> np.ndarray:  # fmt: skip
        """(b, n) float32 cosine of each user's query (from ``ratings`` (b, n), their training part) to every
        movie, plus a cold movie's bonus (``cold_bonus``) and a light user's popularity prior
        (``Profile.prior_weights``); excluding what they rated is the caller's. ``serve``: serve-time options over
        the model's own (``prior``, ``prior_until``, ``cold_boost``): a validation grid's settings of them score
        one trained model. ``queries``: the users' ``queries``, when the caller has them already."""
        profile = replace(self.profile, **serve) if serve else self.profile
        queries = self.queries(ratings, timestamps) if queries is None else queries
        scores = np.asarray(queries @ self.embeddings.T, dtype=np.float32)
        self.raise_cold(scores, queries, profile.cold_boost)
        light, priors = self.light(ratings, serve=serve)
        if len(light):
            scores[light] += priors[:, None] * self.popularity[None, :]
        return scores

    @cached_property
    def cold(self) -> np.ndarray:
        """(n,) bool: the movies nobody rated in the model's dataset."""
        return np.asarray(self.popularity == 0)

    @cached_property
    def scale(self) -> float:
        return vector_scale(self.embeddings, self.popularity)

    def raise_cold(self, scores: np.ndarray, queries: np.ndarray, boost: float) -> None:
        """Add each user's cold bonus (``cold_bonus`` of their query) to the cold movies' ``scores`` (b, n), in
        place: what the single answer adds."""
        if boost > 0 and self.cold.any():
            bonuses = cold_bonus(boost, queries, self.scale)
            scores[:, self.cold] += bonuses[:, None]

    def queries(self, ratings: sp.csr_matrix, timestamps: sp.csr_matrix | None) -> np.ndarray:
        """(b, h) the users' query vectors, as ``score`` makes them (the serve-time options change none)."""
        ratings = ratings.tocsr()
        times = timestamps.tocsr().data if timestamps is not None else None
        weights = profile_weights(ratings.indptr, ratings.data, times, self.profile)
        return profile_queries(ratings.indptr, ratings.indices, weights, profile=self.profile, raw=self.raw,
                               embeddings=self.embeddings, weight=self.weight, bias=self.bias, inner=self.inner,
                               gram=self.gram, times=times, sequence=self.sequence)  # fmt: skip

    def light(self, ratings: sp.csr_matrix, *, serve: dict[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The users of ``ratings`` (b, n) the popularity prior weighs on, and its weight for each: ``score``
        adds weight x ``popularity`` to their rows of the scores without it (so a serve-time setting that
        changes only the prior needs only those rows ranked again)."""
        profile = replace(self.profile, **serve) if serve else self.profile
        priors = profile.prior_weights(np.diff(ratings.tocsr().indptr))
        light = np.flatnonzero(priors > 0)
        return light, priors[light]


SCORED_VERSIONS = 8
"""Versions an evaluation process keeps loaded: every recipe of a table, so no shard reloads one."""


@per_process(maxsize=SCORED_VERSIONS)
def version_scorer(artifacts: ArtifactStore, models: ModelStore, version: str) -> VersionScorer:
    """The scorer of a trained version (no index needed), loaded once per process."""
    from safetensors.numpy import load

    record = models.get(version)
    if record is None:
        raise NotFound(f"model {version!r} does not exist")
    weights = load(artifacts.get_bytes(record["artifacts"]["weights"]))
    embeddings = artifacts.get_array(record["artifacts"]["embeddings"])
    return VersionScorer(
        profile=Profile.of(record.get("config", {})),
        raw=artifacts.get_array(record["artifacts"]["input_embeddings"]),
        embeddings=embeddings,
        popularity=dataset_popularity(artifacts, record["dataset"], len(embeddings)),
        **network(weights),
    )


@per_process(maxsize=SCORED_VERSIONS)
def dataset_popularity(artifacts: ArtifactStore, dataset: str, n: int) -> np.ndarray:
    """A dataset's popularity prior (``popularity_prior``), once per process: a validation grid's models share
    one training dataset, and its ratings (27M at the notebook's scale) are read once, not once per model."""
    return popularity_prior(artifacts.get_array(dataset_artifact(dataset, "ratings_movie")), n)


class Catalogued(Protocol):
    """A loaded model as feedback reads it: its record (whose dataset) and its catalogue rows of movie ids."""

    record: dict[str, Any]

    def rows_of(self, movie_ids: list[int]) -> np.ndarray: ...


def feedback_for(svc: Services, model: Catalogued, user_ids: list[int]) -> dict[int, UserRatings]:
    """The ratings given after ingest by each of ``user_ids`` (those with any), as catalogue rows, by time: read
    from the feedback of the model's dataset (its base's, for a feedback version), so what was posted since the
    model was trained counts; one round trip."""
    feedback = svc.feedback.users_feedback(svc.catalogue.feedback_sources(model.record["dataset"]), user_ids)
    if not len(feedback):
        return {}
    rows = model.rows_of(feedback.movie_ids.tolist())
    users, starts = np.unique(feedback.user_ids, return_index=True)
    ends = [*starts[1:].tolist(), len(feedback)]
    return {
        int(u): UserRatings(rows=rows[lo:hi], values=feedback.values[lo:hi], times=feedback.times[lo:hi])
        for u, lo, hi in zip(users.tolist(), starts.tolist(), ends, strict=True)
    }


def answer_query(svc: Services, params: dict[str, Any]) -> dict[str, Any]:
    """A recommendation job's answer, from the model version the API pinned in ``params["model"]`` (or the two of
    ``params["interleave"]``, interleaved), stamped with its recommendation id (shared/logic/online.py)."""
    versions = params.get("interleave") or [params["model"]]
    models = [load_serving(svc.artifacts, svc.models, version) for version in versions]
    user_id = params.get("user_id")
    # Read once: an interleaving's models are of one dataset (api/experiments.py), so of one catalogue's rows.
    feedback = feedback_for(svc, models[0], [int(user_id)]).get(int(user_id)) if user_id is not None else None
    answers = [_answer_with(svc, model, params, feedback) for model in models]
    if len(answers) == 2:
        answer, teams = interleaved(answers[0], answers[1], params)
        return stamped(svc, answer, params, teams)
    return stamped(svc, answers[0], params)


def _answer_with(
    svc: Services, model: ServingModel, params: dict[str, Any], feedback: UserRatings | None
) -> dict[str, Any]:
    def encode(texts: list[str]) -> np.ndarray:
        import torch

        from shared.ml.encoder import load_encoder

        spec = model.record["encoder"]
        encoder = load_encoder(spec["model"], spec["pooling"], torch.device("cpu"))
        vectors, _ = encode_cached(svc.vectors, encoder, texts)
        return vectors

    return recommend(model, params, encode=encode, feedback=feedback)
