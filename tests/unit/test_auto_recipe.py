"""The ``auto`` recipe: a pipeline's ``choose`` stage, and the options the later stages read once it has chosen.

Pure: ``stage_job``, ``pipeline_options`` and ``choice_of`` on a grid job's table as the evaluation builds it.
"""

from __future__ import annotations

from typing import Any

import pytest

from shared.logic.pipeline import STAGES, choice_of, pipeline_options, stage_job
from shared.ml.protocol import VALIDATION_MAX_USERS, choosing
from shared.ml.recipes import AUTO_RECIPES, RECIPES


def test_choose_runs_a_grid_job_for_auto_only() -> None:
    assert STAGES.index("choose") == 1
    options = {"recipe": "auto", "seed": 5, "path": "p", "model": "tiny", "epochs": 2, "activate": False}
    plan = stage_job("choose", options, {"ingest": {"dataset": "ds-1"}})
    assert plan is not None and plan.kind == "evaluate"
    assert plan.params["options"] == {"model": "tiny", "epochs": 2}  # what every candidate trains with
    assert plan.params["grid"] and plan.params["baselines"] == [] and plan.params["recipes"] == list(AUTO_RECIPES)
    assert plan.params["dataset"] == "ds-1" and plan.params["seed"] == 5
    protocol = choosing()
    assert plan.params["new_user_share"] == protocol.new_user_share > 0 and plan.params["cohort_from"] == 0.0
    assert plan.params["max_users"] == VALIDATION_MAX_USERS and plan.params["min_ratings"] == 1
    assert stage_job("choose", {"recipe": "hybrid"}, {"ingest": {"dataset": "ds-1"}}) is None


def test_an_evaluation_s_pipeline_is_not_indexed() -> None:
    trained = {"train": {"version": "m-1"}}
    plan = stage_job("index", {"recipe": "hybrid", "ef": 50}, trained)
    assert plan is not None and plan.kind == "index" and plan.params == {"version": "m-1", "ef": 50}
    assert stage_job("index", {"recipe": "hybrid", "activate": False, "index": False}, trained) is None


def row(name: str, family: str, ndcg: float, new: float, params: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "family": family, "kind": "recipe", "params": params, "ndcg": ndcg, "recall": ndcg,
            "skipped": None, "new_users": {"new-1": {"ndcg": new, "users": 20}}}  # fmt: skip


def test_the_winner_and_its_setting_become_the_pipeline_s_options() -> None:
    table = {"users": 80, "new_users": {"1": 20}, "rows": [
        row("hybrid hidden_dim=64", "hybrid", 0.10, 0.20, {"hidden_dim": 64}),
        row("ials hidden_dim=128 prior=1", "ials", 0.11, 0.30, {"hidden_dim": 128, "prior": 1.0}),
        row("ials hidden_dim=64", "ials", 0.12, 0.10, {"hidden_dim": 64}),
    ]}  # fmt: skip
    choice = choice_of(table, "job-1")
    assert choice["recipe"] == "ials" and choice["setting"] == {"hidden_dim": 128, "prior": 1.0}
    assert "ials hidden_dim=128 prior=1 scored the best validation objective, 0.1480" in choice["why"]
    assert "against 0.1200 for the best other recipe, hybrid hidden_dim=64" in choice["why"]
    # best first: 0.148, then (80 x 0.10 + 20 x 0.20) / 100 = 0.120, then 0.116
    assert [g["name"] for g in choice["grid"]] == ["ials hidden_dim=128 prior=1", "hybrid hidden_dim=64",
                                                   "ials hidden_dim=64"]  # fmt: skip
    params = {"recipe": "auto", "path": "p", "epochs": 2, "lr": None}
    before = pipeline_options(params, {})
    assert before == {"recipe": "auto", "path": "p", "epochs": 2}  # ingest needs nothing else
    after = pipeline_options(params, {"choose": choice})
    assert after["recipe"] == "ials" and after["architecture"] == "ials" and after["hidden_dim"] == 128
    assert after["prior"] == 1.0 and after["epochs"] == 2  # the client's values win over the recipe's
    assert after["lr"] == RECIPES["ials"].options["lr"]
    named = pipeline_options({"recipe": "seed"}, {"choose": {"recipe": "seed"}})
    assert named["architecture"] == "linear"
    with pytest.raises(ValueError, match="no recipe could be scored"):
        choice_of({"users": 1, "rows": []}, "job-2")


def test_a_finished_stage_leaves_its_result_or_the_fallback_or_a_reason() -> None:
    from shared.jobs.store import Job
    from shared.logic.pipeline import StageFailed, stage_result
    from shared.ml.recipes import FALLBACK_RECIPE

    def job(status: str, *, result: Any = None, code: str = "", message: str = "") -> Job:
        error = {"code": code, "message": message} if code else None
        return Job(
            id="c",
            kind="evaluate",
            status=status,
            progress=1.0,
            stage=None,
            message=None,
            created_at="t",
            started_at="t",
            finished_at="t",
            error=error,
            params={},
            result=result,
        )

    assert stage_result("mine", job("succeeded", result={"triplets": "t"}), "c") == {"triplets": "t"}
    fallback = stage_result("choose", job("failed", code="data_error", message="nobody to evaluate in ds"), "c")
    assert fallback["recipe"] == FALLBACK_RECIPE and fallback["why"].startswith("no validation split: nobody")
    with pytest.raises(StageFailed, match="shard 4-5 failed"):
        stage_result("choose", job("failed", code="internal_error", message="shard 4-5 failed"), "c")
    with pytest.raises(StageFailed, match="no recipe could be scored"):
        stage_result("choose", job("succeeded", result={"users": 3, "rows": []}), "c")
    with pytest.raises(StageFailed, match="its job expired"):
        stage_result("train", None, "c")
