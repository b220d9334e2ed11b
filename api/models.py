"""``/v1/models``: trained model versions with their metrics."""

from __future__ import annotations

from typing import Any

from apiflask import APIBlueprint

from . import services
from .schemas import ActivateOut, ModelDeletedOut, ModelListOut

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
