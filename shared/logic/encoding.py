"""Encoder vectors of strings through the vector cache, and of a dataset's movies or a request's texts, stored.

    texts ──unique──> VectorCache.get (one MGET, shared/store/vectors.py)
                        │ misses only
                        ▼
                      Encoder.encode_uncached (shared/ml/encoder.py) ──> VectorCache.put ──> (len(texts), dim)
    dataset descriptors (vocabulary, CSR) ──> encode_cached (each string once) ──> mean per movie
        ──> embeddings/<dataset>/<identity>-<pooling>   (movies, dim) float32, catalogue order, + /meta
    request texts or items (an encode-input artifact) ──> same cache ──> mean per item ──> encoded/<job>

The names are fixed by their inputs (shared/infra/keys.py), so a job run again rewrites the same artifact.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from shared.errors import NotFound
from shared.infra.keys import dataset_artifact, embeddings_artifact, meta_of
from shared.ml.encoder import Encoder, EncodeStats, Progress, mean_by_rows
from shared.store.artifacts import ArtifactStore
from shared.store.vectors import VectorCache


@dataclass(frozen=True)
class Encoded:
    """A stored matrix: its artifact name, the array, and what encoding it cost."""

    name: str
    vectors: np.ndarray  # (rows, dim) float32
    stats: EncodeStats
    strings: int  # descriptor (or text) occurrences averaged into the rows


def encode_cached(
    cache: VectorCache, encoder: Encoder, texts: list[str], *, on_batch: Progress | None = None
) -> tuple[np.ndarray, EncodeStats]:
    """(len(texts), dim) float32 for ``texts`` (repeats allowed); each unique string encoded at most once, and
    only when the cache has no vector for it under this encoder's identity and pooling."""
    started = time.perf_counter()
    passes_before = encoder.forward_passes
    unique = list(dict.fromkeys(texts))
    keys = cache.keys(encoder.identity, encoder.pooling, unique)
    vectors, missing = cache.get(keys, dim=encoder.dim)
    fresh = encoder.encode_uncached([unique[i] for i in missing], on_batch=on_batch) if missing else vectors[:0]
    vectors[missing] = fresh
    hits = sorted(set(range(len(unique))) - set(missing))
    cache.put([(keys[i], fresh[j]) for j, i in enumerate(missing)], refresh=[keys[i] for i in hits])
    position = {t: i for i, t in enumerate(unique)}
    out = vectors[[position[t] for t in texts]] if texts else vectors[:0]
    stats = EncodeStats(
        unique=len(unique),
        cache_hits=len(unique) - len(missing),
        encoded=len(missing),
        forward_passes=encoder.forward_passes - passes_before,
        seconds=round(time.perf_counter() - started, 3),
    )
    return out, stats


def describe(encoder: Encoder) -> dict[str, Any]:
    """How a matrix was encoded, as records and results name it."""
    return {"model": encoder.name, "identity": encoder.identity, "pooling": encoder.pooling, "dim": encoder.dim}


def encode_dataset(
    artifacts: ArtifactStore, cache: VectorCache, encoder: Encoder, *, dataset: str, on_batch: Progress | None = None
) -> Encoded:
    """The dataset's (movies, dim) matrix for this encoder: a movie is the mean of its descriptors' vectors."""
    if not artifacts.exists(dataset_artifact(dataset, "vocabulary")):
        raise NotFound(f"dataset {dataset!r} does not exist")
    vocabulary: list[str] = artifacts.get_json(dataset_artifact(dataset, "vocabulary"))
    indptr = artifacts.get_array(dataset_artifact(dataset, "desc_indptr"))
    indices = artifacts.get_array(dataset_artifact(dataset, "desc_indices"))
    vectors, stats = encode_cached(cache, encoder, vocabulary, on_batch=on_batch)  # (V, dim), each string once
    movies = mean_by_rows(indptr, indices, vectors)  # (n, dim)
    name = embeddings_artifact(dataset, encoder.identity, encoder.pooling)
    artifacts.put_array(name, movies)
    artifacts.put_json(meta_of(name), {**describe(encoder), "dataset": dataset})
    return Encoded(name, movies, stats, len(indices))


def encode_items(
    artifacts: ArtifactStore,
    cache: VectorCache,
    encoder: Encoder,
    *,
    items: list[list[str]],
    name: str,
    ttl_s: int,
    on_batch: Progress | None = None,
) -> Encoded:
    """(items, dim): an item is the mean of its strings' vectors; stored under ``name`` for ``ttl_s``."""
    flat = [t for item in items for t in item]
    vectors, stats = encode_cached(cache, encoder, flat, on_batch=on_batch)  # (strings, dim)
    indptr = np.zeros(len(items) + 1, dtype=np.int64)
    np.cumsum([len(i) for i in items], out=indptr[1:])
    matrix = mean_by_rows(indptr, np.arange(len(flat)), vectors)  # (items, dim)
    artifacts.put_array(name, matrix, ttl_s=ttl_s)
    return Encoded(name, matrix, stats, len(flat))
