"""Batch recommendations, the pure part: many users answered exactly as the single-user query answers each one,
and the rows written out as CSV or ``.npy`` a piece at a time.

A batch row is one recommended movie of one user: ``(user_id, rank, movie_id, score)``, rank 1 the best, a user's
rows in rank order, users in the batch's order. Each user goes through ``user_ranking``, the function the
single-user answer (``recommend``, behind ``POST /v1/recommendations``) is described from, so a batch row is
that answer's item by construction: same profile (stored ratings with feedback over them), same exclusions,
same index search (ef and k per query), same popular fallback for a user with no ratings; only the titles and
descriptor counts a JSON answer carries are not made. A user may have fewer than k rows (exclusions leave fewer movies).

The ``.npy`` form is one structured array of ``ROW`` (one element per CSV row), written as its header followed by
each part's bytes, so neither form is ever built whole in memory.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from shared.ml.recommend import ServingModel, UserRatings, user_ranking

ROW = np.dtype([("user_id", "<i4"), ("rank", "<i2"), ("movie_id", "<i4"), ("score", "<f4")])
"""One batch row, as the ``.npy`` result stores it (little-endian, packed: 14 bytes); ``score`` is the float32
cosine the single-user answer rounds to 6 decimals for its JSON (the CSV writes it so rounded: the same text)."""

CSV_HEADER = "user_id,rank,movie_id,score\n"
CSV_ROWS_PER_CHUNK = 20_000
"""Rows formatted per piece of a streamed CSV (about 0.5 MB of text)."""


def answer_users(
    model: ServingModel,
    users: np.ndarray,
    *,
    k: int,
    exclude_seen: bool = True,
    feedback: dict[int, UserRatings] | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """``users`` (b,) answered in order: (rows (r,) of ``ROW``, stats {"users", "rows", "popular", "seconds"}).
    ``feedback``: the ratings given after ingest of those users that have any (``serving.feedback_for``)."""
    started = time.perf_counter()
    feedback = feedback or {}
    chunks: list[np.ndarray] = []
    popular = 0
    for user in users.tolist():
        ranking = user_ranking(model, user, k=k, exclude_seen=exclude_seen, feedback=feedback.get(user))
        popular += ranking.strategy == "popular"
        out = np.empty(len(ranking.rows), dtype=ROW)
        out["user_id"] = user
        out["rank"] = np.arange(1, len(ranking.rows) + 1)
        out["movie_id"] = model.movie_ids[ranking.rows]
        out["score"] = ranking.scores
        chunks.append(out)
    rows = np.concatenate(chunks) if chunks else np.zeros(0, dtype=ROW)
    stats = {"users": len(users), "rows": len(rows), "popular": popular,
             "seconds": round(time.perf_counter() - started, 4)}  # fmt: skip
    return rows, stats


def csv_text(rows: np.ndarray) -> Iterator[str]:
    """``rows`` (of ``ROW``) as CSV lines, ``CSV_ROWS_PER_CHUNK`` at a time (no header). A score is written as
    the single-user answer's JSON carries it (rounded to 6 decimals), the shortest text that reads back to it."""
    for lo in range(0, len(rows), CSV_ROWS_PER_CHUNK):
        part = rows[lo : lo + CSV_ROWS_PER_CHUNK]
        yield "".join(
            f"{u},{r},{m},{s!r}\n"
            for u, r, m, s in zip(part["user_id"].tolist(), part["rank"].tolist(), part["movie_id"].tolist(),
                                  part["score"].astype(np.float64).round(6).tolist(), strict=True)
        )  # fmt: skip


def npy_header(rows: int) -> bytes:
    """The ``.npy`` header (format 1.0) of a (rows,) array of ``ROW``: what precedes the rows' raw bytes."""
    import io

    buf = io.BytesIO()
    header = {"descr": np.lib.format.dtype_to_descr(ROW), "fortran_order": False, "shape": (rows,)}
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue()
