"""``/v1/models``: trained model versions with their metrics."""

from __future__ import annotations

from typing import Any

from apiflask import APIBlueprint

from . import services
from .schemas import ModelListOut

bp = APIBlueprint("models", __name__, url_prefix="/v1/models", tag="models")


@bp.get("")
@bp.output(ModelListOut)
def list_models() -> dict[str, Any]:
    """Every trained version, newest first: dataset, encoder, hyper-parameters, test AUC before and after."""
    return {"models": services().models.records()}
