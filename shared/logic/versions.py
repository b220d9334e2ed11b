"""Building a model version: training it (weights, projections, its record) and indexing it.

    dataset + triplets + encoder + config ──> model_version (a hash of them all; config names the recipe's
                                              architecture and profile, shared/ml/training.py TrainConfig)
        exists already? answer its record                      (training the same thing again is free)
        else: encode_dataset ──> train (shared/ml/training.py) ──> models/<v>/weights, /embeddings, record
    version + index params ──> MovieIndex.build ──> models/<v>/index, /index/group ──> record["index"]
                               (inner product for an ials or sequence model, cosine for the others: ``index_space``)
                               (and its map, models/<v>/map, when it has none: shared/logic/maps.py)

One writer builds each part of a version, once; a serving index is never changed (a rebuilt one is written
whole and seen by processes that load the version later).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from shared.errors import NotFound
from shared.infra.keys import dataset_artifact, model_artifact
from shared.logic import fits
from shared.logic.encoding import describe, encode_dataset
from shared.logic.maps import build_map, has_map
from shared.ml.encoder import Encoder
from shared.ml.fitting import TrainConfig
from shared.ml.index import IndexParams, MovieIndex
from shared.store.artifacts import ArtifactStore
from shared.store.datasets import DatasetStore, load_ratings
from shared.store.models import ModelStore, model_version
from shared.store.vectors import VectorCache

if TYPE_CHECKING:
    import torch

OnEpoch = Callable[[int, float, float], None]
"""Called with (epoch done, train loss, validation loss)."""


def train_version(
    artifacts: ArtifactStore,
    models: ModelStore,
    cache: VectorCache,
    encoder: Encoder,
    *,
    dataset: str,
    triplets: str | list[str],
    config: TrainConfig,
    device: torch.device,
    created_at: str,
    on_epoch: OnEpoch | None = None,
    store_fit: str | None = None,
) -> tuple[dict[str, Any], bool]:
    """Train the Siamese projection of ``dataset`` on ``triplets`` (one artifact, or several whose rows are
    joined: descriptor and co-liked triplets together): (the version's record, whether it existed). An "ials"
    model's factorisation is also stored as the iALS baseline's fit ``store_fit`` of ``dataset`` when asked (an
    evaluation's: shared/logic/fits.py); a version that existed already stores nothing, and the evaluation's
    scoring fits its iALS row itself."""
    from safetensors.torch import save

    from shared.ml.training import train

    version = model_version(
        dataset=dataset,
        triplets=triplets,
        encoder_identity=encoder.identity,
        pooling=encoder.pooling,
        config=config.as_dict(),
    )
    existing = models.get(version)
    if existing is not None:
        return existing, True
    encoded = encode_dataset(artifacts, cache, encoder, dataset=dataset)
    names = [triplets] if isinstance(triplets, str) else list(triplets)
    for name in names:
        if not artifacts.exists(name):
            raise NotFound(f"triplets {name!r} do not exist; mine them first")
    movie_ids = artifacts.get_array(dataset_artifact(dataset, "movie_ids"))
    rows = catalogue_rows(movie_ids, np.concatenate([artifacts.get_array(n) for n in names]))  # (m, 3)
    ratings, times = None, None
    if config.architecture in ("hybrid", "ials", "sequence"):
        import scipy.sparse as sp

        stored = load_ratings(artifacts, dataset, timestamps=config.architecture == "sequence")
        ratings = sp.csr_matrix(  # in the stored order, which ``times`` follows
            (stored.values, stored.movie_index, stored.indptr), shape=(len(stored.user_ids), len(movie_ids))
        )
        times = stored.timestamps
    started = time.perf_counter()
    result = train(encoded.vectors, rows, config, device=device, progress=on_epoch, ratings=ratings, times=times)
    if store_fit and result.factorisation is not None:
        fits.store(artifacts, dataset, store_fit, result.factorisation, seconds=time.perf_counter() - started,
                   by=f"model {version}")  # fmt: skip
    weights, projected = model_artifact(version, "weights"), model_artifact(version, "embeddings")
    artifacts.put_bytes(weights, save(result.state, metadata={"version": version}))
    artifacts.put_array(projected, result.projected)
    encoder_spec = describe(encoder)
    record = {
        "version": version,
        "created_at": created_at,
        "dataset": dataset,
        "triplets": triplets,
        "encoder": {k: encoder_spec[k] for k in ("model", "identity", "pooling")},
        "input_dim": encoder.dim,
        "config": config.as_dict(),
        "metrics": {
            "test_auc_before": round(result.auc_before, 6),
            "test_auc_after": round(result.auc_after, 6),
            "train_losses": [round(v, 6) for v in result.train_losses],
            "val_losses": [round(v, 6) for v in result.val_losses],
            **({"movies_with_learned_embedding": result.warm} if result.warm is not None else {}),
        },
        "artifacts": {"weights": weights, "embeddings": projected, "input_embeddings": encoded.name},
        "device": str(device),
    }
    models.put(record)
    return record, False


def index_space(record: dict[str, Any]) -> str:
    """The index's space for a version: "ip" for an ials or a sequence model (a score is a user's factors, or
    the network's last state, times a movie's vector, whose norm counts), "cosine" for the others (unit vectors)."""
    return "ip" if record.get("config", {}).get("architecture") in ("ials", "sequence") else "cosine"


def catalogue_rows(movie_ids: np.ndarray, triplets: np.ndarray) -> np.ndarray:
    """(m, 3) movieIds -> catalogue rows (``movie_ids`` is the catalogue, in order)."""
    order = np.argsort(movie_ids)
    rows = order[np.searchsorted(movie_ids, triplets, sorter=order)]
    if not (movie_ids[rows] == triplets).all():
        raise NotFound("the triplets name movies that are not in the dataset")
    return np.asarray(rows, dtype=np.int64)


def index_version(
    artifacts: ArtifactStore, models: ModelStore, datasets: DatasetStore, *, version: str, params: IndexParams
) -> tuple[dict[str, Any], bool]:
    """The hnswlib index of a version's projected embeddings, and its map (shared/logic/maps.py) when it has none:
    (the index's description, whether it existed)."""
    record = models.get(version)
    if record is None:
        raise NotFound(f"model {version!r} does not exist")
    if not has_map(artifacts, version):
        build_map(artifacts, datasets, models, version)
    params = replace(params, space=index_space(record))
    existing = record.get("index")
    if existing is not None and existing["params"] == params.as_dict():
        return existing, True
    embeddings = artifacts.get_array(record["artifacts"]["embeddings"])  # (n, hidden)
    started = time.perf_counter()
    index = MovieIndex.build(embeddings, params)
    data, sha256 = index.to_bytes()
    name, group = model_artifact(version, "index"), model_artifact(version, "index/group")
    artifacts.put_bytes(name, data)
    artifacts.put_array(group, index.group)
    described = {
        "artifact": name,
        "group_artifact": group,
        "distinct_vectors": index.groups,
        "sha256": sha256,
        "params": params.as_dict(),
        "n": int(embeddings.shape[0]),
        "dim": int(embeddings.shape[1]),
        "build_seconds": round(time.perf_counter() - started, 3),
    }
    models.update(version, index=described)
    return described, False
