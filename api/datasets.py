"""``/v1/datasets``: submit an ingest, list and read datasets."""

from __future__ import annotations

from typing import Any

from apiflask import APIBlueprint

from shared.errors import NotFound
from shared.store.datasets import confine

from . import accepted, require_room, services, submit_job
from .schemas import DatasetDeletedOut, DatasetIn, DatasetListOut, DatasetOut, JobOut, MoviesOut, MoviesQuery

bp = APIBlueprint("datasets", __name__, url_prefix="/v1/datasets", tag="datasets")


@bp.post("")
@bp.input(DatasetIn, arg_name="body", example={"path": "ml-latest-small", "tags_per_movie": 5})
@bp.output(JobOut, status_code=202, description="the ingest job, queued")
@bp.doc(
    responses={
        400: "invalid request or path outside the data root",
        409: "quota_exceeded: MOVIEREC_MAX_DATASETS datasets are stored",
        413: "body too large",
        415: "not JSON",
    }
)
def create_dataset(body: dict[str, Any]) -> Any:
    """Ingest a MovieLens directory (an ``ingest`` job); the result names the dataset id."""
    root = services().settings.data_root
    confine(body["path"], root=root)
    if body["genres_fix_csv"]:
        confine(body["genres_fix_csv"], root=root)
    require_room("datasets")
    return accepted(submit_job(kind="ingest", params=body))


@bp.get("")
@bp.output(DatasetListOut)
def list_datasets() -> dict[str, Any]:
    """Every dataset, newest first."""
    return {"datasets": services().datasets.records()}


@bp.get("/<dataset_id>")
@bp.output(DatasetOut)
@bp.doc(responses={404: "unknown dataset"})
def get_dataset(dataset_id: str) -> dict[str, Any]:
    """A dataset's counts: movies kept and dropped, users, ratings, vocabulary; its source and options."""
    record = services().datasets.get(dataset_id)
    if record is None:
        raise NotFound(f"dataset {dataset_id!r} does not exist")
    return record


@bp.delete("/<dataset_id>")
@bp.output(DatasetDeletedOut)
@bp.doc(responses={404: "unknown dataset", 409: "the active model was trained on this dataset"})
def delete_dataset(dataset_id: str) -> dict[str, Any]:
    """Delete a dataset with the model versions trained on it, its triplets, encoder matrices and evaluation
    splits; datasets derived from it stay."""
    svc = services()
    return svc.datasets.delete(dataset_id, svc.models)


@bp.get("/<dataset_id>/movies")
@bp.input(MoviesQuery, location="query", arg_name="query", unknown=None)
@bp.output(MoviesOut)
@bp.doc(responses={404: "unknown dataset"})
def list_movies(dataset_id: str, query: dict[str, Any]) -> dict[str, Any]:
    """The catalogue in catalogue order (the row order of every per-movie array), paged."""
    catalogue = services().datasets.catalogue(dataset_id)
    lo, hi = query["offset"], query["offset"] + query["limit"]
    return {
        "dataset": dataset_id,
        "total": len(catalogue),
        "offset": lo,
        "limit": query["limit"],
        "movies": catalogue[lo:hi],
    }
