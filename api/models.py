"""``/v1/models``: trained model versions with their metrics, and a version's movies drawn on a plane (``/map``)."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from apiflask import APIBlueprint
from flask import current_app

from shared.errors import Conflict, NotFound
from shared.infra.keys import dataset_artifact, model_artifact
from shared.ml.projection import MAIN_GENRES, main_genres, pca_2d
from shared.services import Services

from . import services
from .schemas import ActivateOut, ModelDeletedOut, ModelListOut, ModelMapOut, ModelMapQuery

bp = APIBlueprint("models", __name__, url_prefix="/v1/models", tag="models")


@bp.get("")
@bp.output(ModelListOut)
def list_models() -> dict[str, Any]:
    """Every trained version, newest first: dataset, encoder, hyper-parameters, test AUC before and after."""
    return {"active": services().models.active(), "models": services().models.records()}


@bp.post("/<version>/activate")
@bp.output(ActivateOut)
@bp.doc(responses={404: "unknown model version", 409: "the version has no index yet"})
def activate(version: str) -> dict[str, Any]:
    """Serve recommendations from this version: one atomic switch; activating an older one is a rollback."""
    return {"active": version, "previous": services().models.activate(version)}


@bp.delete("/<version>")
@bp.output(ModelDeletedOut)
@bp.doc(responses={404: "unknown model version", 409: "the version is the active model"})
def delete_model(version: str) -> dict[str, Any]:
    """Delete a version that is not active: its record and every artifact (weights, embeddings, index)."""
    svc = services()
    keys, freed = svc.models.delete(version, svc.artifacts)
    return {"deleted": version, "keys": keys, "bytes": freed}


@bp.get("/<version>/map")
@bp.input(ModelMapQuery, location="query", arg_name="query", unknown=None)
@bp.output(ModelMapOut)
@bp.doc(responses={404: "unknown model version", 409: "the version's movie vectors are not stored"})
def movie_map(version: str, query: dict[str, Any]) -> Any:
    """The version's movies on a plane: its movie vectors' first two principal axes (PCA), each movie's main
    genre and title; ``limit`` keeps the most-rated movies. Computed on the first request, then kept beside the
    version's other artifacts (deleted with it)."""
    svc = services()
    record = svc.models.get(version)
    if record is None:
        raise NotFound(f"model {version!r} does not exist")
    stored = _map_arrays(svc, version, record)
    rows = np.arange(len(stored["x"]))
    if query.get("limit") is not None and query["limit"] < len(rows):
        most_rated = np.argsort(-stored["ratings"].astype(np.int64), kind="stable")[: query["limit"]]
        rows = np.sort(most_rated)  # catalogue order; ties went to the earlier movie
    genre = stored["genre"][rows]
    present = np.unique(genre)  # ascending: the fixed order
    dataset = record["dataset"]
    movie_ids = svc.artifacts.get_array(dataset_artifact(dataset, "movie_ids"))
    titles: list[str] = svc.artifacts.get_json(dataset_artifact(dataset, "titles"))
    body = {
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
    # Serialized here, not through the output schema (which documents it): marshmallow would visit every value.
    return current_app.json.response(body)


def _map_arrays(svc: Services, version: str, record: dict[str, Any]) -> dict[str, np.ndarray]:
    """The stored map of a version, computed and stored first if there is none: one ``.npz`` artifact of
    x, y (float32), genre (int16, into genres), ratings (int32 counts, for ``limit``), genres (str) and
    explained_variance. Arrays rather than the answer's JSON: 14 bytes a movie instead of ~50, the titles and
    movie ids read from the dataset instead of kept twice, and ``limit`` a slice instead of a parse."""
    a, name = svc.artifacts, model_artifact(version, "map")
    if a.exists(name):
        with np.load(io.BytesIO(a.get_bytes(name)), allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    dataset = record.get("dataset")
    vectors_name = record.get("artifacts", {}).get("embeddings") or model_artifact(version, "embeddings")
    if not dataset or svc.datasets.get(dataset) is None or not a.exists(vectors_name):
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
    if svc.models.get(version) is None:  # deleted meanwhile: leave nothing behind it
        a.delete(name)
        raise NotFound(f"model {version!r} does not exist")
    return arrays
