"""The model a worker serves, loaded from the stores, and one recommendation answered with it.

    job params ──> load_serving(version) ──> ServingModel (shared/ml/recommend.py) ──> recommend ──> answer
                   once per process and version;      keywords encoded with the model's own encoder and
                   the previous version kept beside it pooling, through the vector cache

A loaded version is answered without a look at Redis: a version's weights, embeddings and dataset never
change, and neither does the index it was loaded with (a rebuilt index is seen by processes that load later).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import redis

from shared.errors import Conflict
from shared.infra.keys import dataset_artifact
from shared.infra.process import per_process
from shared.ml.index import IndexParams, MovieIndex
from shared.ml.recommend import ServingModel, recommend
from shared.store.artifacts import ArtifactStore
from shared.store.models import ModelStore
from shared.store.vectors import VectorCache

SERVED_VERSIONS = 2
"""Versions a process keeps loaded: the one it serves and the one before (a rollback, a hot swap)."""


@per_process(maxsize=SERVED_VERSIONS)
def load_serving(artifacts: ArtifactStore, models: ModelStore, version: str) -> ServingModel:
    """The model version ready to serve, loaded once per process."""
    from safetensors.numpy import load

    record = models.get(version)
    if record is None:
        raise Conflict(f"model {version!r} no longer exists")
    index_meta = record.get("index")
    if index_meta is None:
        raise Conflict(f"model {version!r} has no index")
    index = MovieIndex.from_bytes(
        artifacts.get_bytes(index_meta["artifact"]),
        sha256=index_meta["sha256"],
        group=artifacts.get_array(index_meta["group_artifact"]),
        dim=index_meta["dim"],
        params=IndexParams(**index_meta["params"]),
    )
    weights = load(artifacts.get_bytes(record["artifacts"]["weights"]))

    def part(name: str) -> str:
        return dataset_artifact(record["dataset"], name)

    vocabulary = artifacts.get_json(part("vocabulary"))
    indptr, indices = artifacts.get_array(part("desc_indptr")), artifacts.get_array(part("desc_indices"))
    return ServingModel(
        version=version,
        record=record,
        index=index,
        weight=weights["proj.weight"].astype(np.float32),
        bias=weights["proj.bias"].astype(np.float32),
        raw=artifacts.get_array(record["artifacts"]["input_embeddings"]),
        movie_ids=artifacts.get_array(part("movie_ids")),
        titles=artifacts.get_json(part("titles")),
        descriptors=[[vocabulary[j] for j in indices[indptr[i] : indptr[i + 1]]] for i in range(len(indptr) - 1)],
        vocabulary=vocabulary,
        desc_indptr=indptr.astype(np.int64),
        desc_indices=indices,
        user_ids=artifacts.get_array(part("user_ids")),
        ratings_indptr=artifacts.get_array(part("ratings_indptr")),
        ratings_movie=artifacts.get_array(part("ratings_movie")),
        ratings_value=artifacts.get_array(part("ratings_value")),
    )


def answer_query(
    artifacts: ArtifactStore, models: ModelStore, client: redis.Redis, *, prefix: str, params: dict[str, Any]
) -> dict[str, Any]:
    """A recommendation job's answer, from the model version the API pinned in ``params["model"]``."""
    model = load_serving(artifacts, models, params["model"])

    def encode(texts: list[str]) -> np.ndarray:
        import torch

        from shared.ml.encoder import load_encoder

        spec = model.record["encoder"]
        encoder = load_encoder(spec["model"], spec["pooling"], torch.device("cpu"))
        vectors, _ = VectorCache(client, prefix=prefix).encode(encoder, texts)
        return vectors

    return recommend(model, params, encode=encode)
