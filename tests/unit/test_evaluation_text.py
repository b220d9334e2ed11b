"""The evaluation's table as text (``cli.evaluate.format_table``), what ``movierec evaluate``, the demo and
``bench.quality`` print: a row skipped at every setting of its grid (EASE over its memory budget at the notebook's
scale) is said so, not formatted as a number."""

from __future__ import annotations

from typing import Any

from cli.evaluate import format_table

METRICS = {"recall": 0.1, "ndcg": 0.09, "hr": 0.4, "coverage": 0.02, "cold_recall": 0.0, "cold_share": 0.0}


def row(name: str, family: str, *, skipped: str | None = None, grid: dict[str, float | None]) -> dict[str, Any]:
    tuning = {"grid": grid, "chosen": None, "settings": len(grid)}
    return {"name": name, "kind": "baseline", "family": family, "skipped": skipped, "seconds": 1.5, "tuning": tuning,
            **METRICS}  # fmt: skip


def test_a_row_skipped_at_every_setting_says_so_and_a_tuned_one_its_best_validation_score() -> None:
    why = "EASE needs 48.8 GiB for 57,252 movies"
    table = {
        "protocol": {
            "split": "temporal",
            "train_fraction": 0.8,
            "min_ratings": 10,
            "new_user_share": 0.15,
            "relevant_at": 4.0,
            "k": 10,
            "seed": 42,
            "tuned": True,
            "max_evaluated": 20_000,
        },
        "dataset": "ds-a",
        "training_dataset": "ds-b",
        "users": 20_000,
        "cold_users": 5,
        "new_users": {},
        "rows": [
            row("EASE lam=500", "EASE", skipped=why, grid={"EASE lam=50": None, "EASE lam=500": None}),
            row("iALS factors=128", "iALS", grid={"iALS factors=64": 0.0564, "iALS factors=128": 0.0571}),
        ],
        "best": None,
        "reference": "iALS",
        "notes": ["evaluated: a hashed sample of 20,000 of the 240,712 test users"],
    }
    text = format_table(table)
    assert "20,000 users evaluated (a hashed sample)" in text
    assert f"EASE lam=500{' ' * 5}baseline skipped: {why}" in text
    assert "# EASE: not tuned, skipped at every one of its 2 settings on validation" in text
    chose = "# iALS: tuned over 2 settings on validation, chose iALS factors=128 (validation objective 0.0571: NDCG@10"
    assert chose in text
    assert "# evaluated: a hashed sample of 20,000 of the 240,712 test users" in text
