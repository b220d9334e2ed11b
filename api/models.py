"""``/v1/models``: trained model versions with their metrics, and a version's movies drawn on a plane (``/map``)."""

from __future__ import annotations

from typing import Any

from apiflask import APIBlueprint
from flask import current_app

from shared.errors import Conflict
from shared.logic.maps import map_answer

from .context import services
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
@bp.doc(responses={404: "unknown model version", 409: "the version is the active model, or a variant of an "
                        "experiment that has not ended"})  # fmt: skip
def delete_model(version: str) -> dict[str, Any]:
    """Delete a version that is neither active nor serving an experiment that has not ended: its record and every
    artifact (weights, embeddings, index)."""
    svc = services()
    if experiments := svc.experiments.uses(version):
        raise Conflict(f"model {version!r} is a variant of experiment(s) {', '.join(experiments)}: end them first "
                       "(POST /v1/experiments/<name>/end)")  # fmt: skip
    keys, freed = svc.models.delete(version, svc.artifacts)
    return {"deleted": version, "keys": keys, "bytes": freed}


@bp.get("/<version>/map")
@bp.input(ModelMapQuery, location="query", arg_name="query", unknown=None)
@bp.output(ModelMapOut)
@bp.doc(responses={404: "unknown model version", 409: "the version's map is not built (its index job builds it)"})
def movie_map(version: str, query: dict[str, Any]) -> Any:
    """The version's movies on a plane: its movie vectors' first two principal axes (PCA), each movie's main
    genre and title; ``limit`` keeps the most-rated movies. Built by the job that indexes the version and kept
    beside its other artifacts (deleted with it)."""
    svc = services()
    body = map_answer(svc.artifacts, svc.models, version, limit=query.get("limit"))
    # Serialized here, not through the output schema (which documents it): marshmallow would visit every value.
    return current_app.json.response(body)
