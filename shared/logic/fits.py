"""Fitted baselines stored for a cluster: one fit made once, loaded by every process that scores with it.

    fit_id(name, params JSON, seed) ──> "<name>-<hash>": what a fit is stored under, beside its training
                                        dataset (``evaluation_fit_artifact``: ``evaluations/<ds>/fits/<id>/``);
                                        ``setting_fit_id`` from a setting's mapping, the same id
    store(training_ds, fit_id, model, seconds) ──> the model's arrays (``baselines.to_arrays``), then a
                                                   ``summary`` naming them, written last
    load(training_ds, fit_id) ──> the model (``baselines.from_arrays``), or None while no summary is stored

Two writers:

- a test scoring's cell (shared/logic/scoring.py ``fit_baseline``): the first cell that needs an item-kNN,
  RP3beta or iALS row fits it, under a claim, and stores it for the others;
- the ``ials`` recipe's training (shared/logic/versions.py ``train_version``), when its evaluation asks for it
  (the pipeline option ``store_fit``): its factorisation is the iALS baseline's at the same factors,
  regularization, alpha and seed on the same training dataset (``baselines._ials`` on the same matrix), so the
  evaluation's iALS row loads it rather than fitting it again beside the recipe (shared/logic/evaluation.py
  ``factorised_by``). At the notebook's scale that fit is minutes of a core.

Both writers of one fit id write the same arrays, so a race between them stores the same bytes twice.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from hashlib import sha256
from typing import Any

from shared.infra.clock import utcnow_iso
from shared.infra.keys import evaluation_fit_artifact
from shared.ml import baselines
from shared.store.artifacts import ArtifactStore


def fit_id(name: str, params: str, seed: int) -> str:
    """The name a fit of baseline ``name`` at ``params`` (JSON, keys sorted) with ``seed`` is stored under."""
    return f"{name}-{sha256(f'{params}|{seed}'.encode()).hexdigest()[:16]}"


def setting_fit_id(name: str, setting: Mapping[str, Any], seed: int) -> str:
    """``fit_id`` of a setting given as a mapping (a table row's ``params``, an evaluation's chosen setting)."""
    return fit_id(name, json.dumps(dict(setting), sort_keys=True), seed)


def exists(artifacts: ArtifactStore, training_ds: str, fit: str) -> bool:
    return artifacts.exists(evaluation_fit_artifact(training_ds, fit, "summary"))


def load(artifacts: ArtifactStore, training_ds: str, fit: str) -> baselines.Baseline | None:
    """The stored fit ``fit`` of baselines on ``training_ds``; None when it is not stored (yet)."""
    if not exists(artifacts, training_ds, fit):
        return None
    parts = artifacts.get_json(evaluation_fit_artifact(training_ds, fit, "summary"))["parts"]
    arrays = {part: artifacts.get_array(evaluation_fit_artifact(training_ds, fit, part)) for part in parts}
    return baselines.from_arrays(arrays)


def store(
    artifacts: ArtifactStore, training_ds: str, fit: str, model: baselines.Baseline, *, seconds: float, by: str
) -> None:
    """``model``'s arrays under ``fit``, the summary last (a reader sees the whole fit or none of it); ``by``
    says who fitted it ("scoring", or the recipe's model version)."""
    arrays = baselines.to_arrays(model)
    for part, array in arrays.items():
        artifacts.put_array(evaluation_fit_artifact(training_ds, fit, part), array)
    summary = {"parts": sorted(arrays), "seconds": round(seconds, 3), "by": by, "at": utcnow_iso()}
    artifacts.put_json(evaluation_fit_artifact(training_ds, fit, "summary"), summary)
