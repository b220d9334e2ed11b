"""A model version's movies drawn on a plane, built once by the job that indexes the version, read by the API.

    index job (workers.cpu.build_index) ──> build_map: the version's movie vectors ──> pca_2d, main_genres
        (shared/ml/projection.py) ──> models/<version>/map, one .npz beside the version's other artifacts
    GET /v1/models/<version>/map ──> map_answer: the stored arrays, ``limit`` most-rated movies, titles and ids
        read from the dataset ──> JSON

Arrays rather than the answer's JSON: 14 bytes a movie instead of ~50, the titles and movie ids read from the
dataset instead of kept twice, and ``limit`` a slice instead of a parse. The map goes with its version (it lies
under ``models/<version>/``); a version indexed before maps were built has none until it is indexed again.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from shared.errors import Conflict, NotFound
from shared.infra.keys import dataset_artifact, model_artifact
from shared.ml.projection import MAIN_GENRES, main_genres, pca_2d
from shared.store.artifacts import ArtifactStore
from shared.store.datasets import DatasetStore
from shared.store.models import ModelStore


def build_map(artifacts: ArtifactStore, datasets: DatasetStore, models: ModelStore, version: str) -> None:
    """Compute and store a version's map: one ``.npz`` of x, y (float32), genre (int16, into genres), ratings
    (int32 counts, for ``limit``), genres (str) and explained_variance. Conflict when the version's movie vectors
    are not stored or do not match its dataset; NotFound when the version is gone (nothing is left behind)."""
    record = models.get(version)
    if record is None:
        raise NotFound(f"model {version!r} does not exist")
    a, name = artifacts, model_artifact(version, "map")
    dataset = record.get("dataset")
    vectors_name = record.get("artifacts", {}).get("embeddings") or model_artifact(version, "embeddings")
    if not dataset or datasets.get(dataset) is None or not a.exists(vectors_name):
        raise Conflict(f"model {version!r} has no movie vectors stored: train it (POST /v1/jobs/train) to map it")
    vectors = a.get_array(vectors_name)  # (n, dim), catalogue order
    indptr = a.get_array(dataset_artifact(dataset, "desc_indptr"))
    if vectors.ndim != 2 or len(vectors) != len(indptr) - 1:
        raise Conflict(f"model {version!r}: its movie vectors do not match its dataset's {len(indptr) - 1} movies")
    projection = pca_2d(vectors)
    vocabulary: list[str] = a.get_json(dataset_artifact(dataset, "vocabulary"))
    genre = main_genres(vocabulary, indptr, a.get_array(dataset_artifact(dataset, "desc_indices")))
    ratings_name = dataset_artifact(dataset, "ratings_movie")
    rated = a.get_array(ratings_name) if a.exists(ratings_name) else np.zeros(0, dtype=np.int32)
    arrays = {
        "x": projection.coords[:, 0].astype(np.float32),
        "y": projection.coords[:, 1].astype(np.float32),
        "genre": genre,
        "ratings": np.bincount(rated, minlength=len(vectors)).astype(np.int32),
        "genres": np.array(MAIN_GENRES),
        "explained_variance": np.array(projection.explained_variance, dtype=np.float64),
    }
    buf = io.BytesIO()
    np.savez(buf, allow_pickle=False, **arrays)
    a.put_bytes(name, buf.getvalue())
    if models.get(version) is None:  # deleted meanwhile: leave nothing behind it
        a.delete(name)
        raise NotFound(f"model {version!r} does not exist")


def has_map(artifacts: ArtifactStore, version: str) -> bool:
    return artifacts.exists(model_artifact(version, "map"))


def map_answer(artifacts: ArtifactStore, models: ModelStore, version: str, *, limit: int | None) -> dict[str, Any]:
    """The stored map of a version as ``GET /v1/models/<version>/map`` answers it; ``limit`` keeps the most-rated
    movies (ties to the earlier one), in catalogue order. NotFound for an unknown version, Conflict when its map
    was never built."""
    record = models.get(version)
    if record is None:
        raise NotFound(f"model {version!r} does not exist")
    name = model_artifact(version, "map")
    if not artifacts.exists(name):
        raise Conflict(
            f"model {version!r} has no map yet: its index job builds it (POST /v1/jobs/index "
            f'{{"version": "{version}"}}; a version needs its movie vectors for one)'
        )
    with np.load(io.BytesIO(artifacts.get_bytes(name)), allow_pickle=False) as npz:
        stored = {key: npz[key] for key in npz.files}
    rows = np.arange(len(stored["x"]))
    if limit is not None and limit < len(rows):
        most_rated = np.argsort(-stored["ratings"].astype(np.int64), kind="stable")[:limit]
        rows = np.sort(most_rated)  # catalogue order; ties went to the earlier movie
    genre = stored["genre"][rows]
    present = np.unique(genre)  # ascending: the fixed order
    dataset = record["dataset"]
    movie_ids = artifacts.get_array(dataset_artifact(dataset, "movie_ids"))
    titles: list[str] = artifacts.get_json(dataset_artifact(dataset, "titles"))
    return {
        "version": version,
        "dataset": dataset,
        "method": "pca",
        "explained_variance": [round(float(v), 6) for v in stored["explained_variance"]],
        "genres": [str(stored["genres"][i]) for i in present],
        "movies": {
            "movie_id": movie_ids[rows].tolist(),
            "x": np.round(stored["x"][rows].astype(np.float64), 4).tolist(),
            "y": np.round(stored["y"][rows].astype(np.float64), 4).tolist(),
            "genre": np.searchsorted(present, genre).tolist(),
            "title": [titles[i] for i in rows.tolist()],
        },
    }
