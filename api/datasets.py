"""``/v1/datasets``: submit an ingest (a path in the data root, or the files uploaded), list and read datasets."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from apiflask import APIBlueprint

from shared.errors import NotFound
from shared.logic.ingest import confine
from shared.logic.uploads import drop_upload

from . import uploads
from .context import accepted, require_room, require_storage, services, submit_job
from .schemas import DatasetDeletedOut, DatasetIn, DatasetListOut, DatasetOut, JobOut, MoviesOut, MoviesQuery

bp = APIBlueprint("datasets", __name__, url_prefix="/v1/datasets", tag="datasets")


def upload_dataset() -> Any:
    """The multipart branch of ``POST /v1/datasets``: the files streamed into Redis (api/uploads.py), then an
    ingest job that names the upload instead of a path."""
    svc = services()
    require_room("datasets")
    require_storage()  # before the body is read, not only once it is stored
    upload = uploads.receive(svc.artifacts, limit=svc.settings.max_upload_bytes, ttl_s=svc.settings.result_ttl_s)
    params = {"upload": upload.id, "files": upload.files, "source": upload.source, **upload.form}
    try:
        return accepted(submit_job(kind="ingest", params=params))
    except BaseException:
        drop_upload(svc.artifacts, upload.id)
        raise


def or_upload(upload_view: Callable[[], Any]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Send a multipart request to ``upload_view``, any other to the decorated (JSON) view. Placed above
    ``@bp.input``, so a multipart body never meets the JSON schema; below ``@bp.output``, so both answers are
    serialised alike. ``functools.wraps`` carries APIFlask's ``_spec`` over."""

    def decorate(json_view: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(json_view)
        def view(*args: Any, **kwargs: Any) -> Any:
            return upload_view() if uploads.is_upload() else json_view(*args, **kwargs)

        return view

    return decorate


@bp.post("")
@bp.output(JobOut, status_code=202, description="the ingest job, queued")
@bp.doc(
    responses={
        400: "invalid request, path outside the data root, or (multipart) an unknown, missing or empty part",
        409: "quota_exceeded: MOVIEREC_MAX_DATASETS datasets are stored",
        413: "body too large: JSON past MOVIEREC_MAX_BODY_BYTES, an upload past MOVIEREC_MAX_UPLOAD_BYTES",
        415: "neither JSON nor multipart/form-data",
    }
)
@or_upload(upload_dataset)
@bp.input(DatasetIn, arg_name="body", example={"path": "ml-latest-small", "tags_per_movie": 5})
def create_dataset(body: dict[str, Any]) -> Any:
    """Ingest a MovieLens directory (an ``ingest`` job); the result names the dataset id.

    As JSON, ``path`` names a directory inside the data root. As multipart/form-data, the files themselves
    (``movies.csv``, ``ratings.csv``, ... or one ``archive``, a MovieLens .zip) are streamed into Redis, so a
    worker with no access to the API's disk ingests them; the same files give the same dataset id."""
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
    return svc.catalogue.delete(dataset_id)


@bp.get("/<dataset_id>/movies")
@bp.input(MoviesQuery, location="query", arg_name="query", unknown=None)
@bp.output(MoviesOut)
@bp.doc(responses={404: "unknown dataset"})
def list_movies(dataset_id: str, query: dict[str, Any]) -> dict[str, Any]:
    """The catalogue in catalogue order (the row order of every per-movie array), paged."""
    catalogue = services().catalogue.movies(dataset_id)
    lo, hi = query["offset"], query["offset"] + query["limit"]
    return {
        "dataset": dataset_id,
        "total": len(catalogue),
        "offset": lo,
        "limit": query["limit"],
        "movies": catalogue[lo:hi],
    }
