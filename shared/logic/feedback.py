"""Feedback versions: a dataset with the feedback posted to it, a dataset of its own, named by its content.

    pipeline / evaluation over a dataset ──> feedback_version(ds): the base's ratings with every feedback row over
        them (``merge_ratings``), stored once as ds-<hash(base, feedback)> (shared/store/feedback.py ``version_id``)
        with the base's catalogue, so a model still says what it was trained on

A version's ratings are the base's with, per user, every stored rating of a movie rated again dropped and
the feedback appended after the stored ones (by timestamp, then movie id): the order the profile reads.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from shared.errors import NotFound
from shared.infra.clock import utcnow_iso
from shared.infra.keys import dataset_artifact
from shared.store.datasets import DatasetRatings, DatasetStore
from shared.store.feedback import Feedback, FeedbackStore, base_of, version_id


def merge_ratings(stored: DatasetRatings, feedback: Feedback, feedback_rows: np.ndarray) -> DatasetRatings:
    """A dataset's per-user ratings with ``feedback`` over them (``feedback_rows``: its movies' catalogue rows),
    users ascending, new users included (times 0 where the dataset kept none)."""
    user_ids, indptr, movie, values = stored.user_ids, stored.indptr, stored.movie_index, stored.values
    times = stored.timestamps if stored.timestamps is not None else np.zeros(len(values), dtype=np.int64)
    owner = np.repeat(user_ids.astype(np.int64), np.diff(indptr))  # (r,) user id of each stored rating
    n = int(max(int(movie.max(initial=0)), int(feedback_rows.max(initial=0)))) + 1
    stored_pair = owner * n + movie.astype(np.int64)
    new_pair = feedback.user_ids * n + feedback_rows
    keep = ~np.isin(stored_pair, new_pair)
    all_owner = np.concatenate([owner[keep], feedback.user_ids])
    source = np.concatenate([np.zeros(int(keep.sum()), dtype=np.int8), np.ones(len(feedback), dtype=np.int8)])
    position = np.concatenate([np.flatnonzero(keep), np.arange(len(feedback))])
    order = np.lexsort((position, source, all_owner))  # by user, stored before feedback, each in its order
    users, counts = np.unique(all_owner[order], return_counts=True)
    new_indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    merged_movie = np.concatenate([movie[keep], feedback_rows.astype(movie.dtype)])[order]
    merged_values = np.concatenate([values[keep], feedback.values.astype(values.dtype)])[order]
    merged_times = np.concatenate([times[keep], feedback.times.astype(times.dtype)])[order]
    return DatasetRatings(users.astype(np.int32), new_indptr, merged_movie, merged_values, merged_times)


def feedback_version(datasets: DatasetStore, feedback: FeedbackStore, ds_id: str) -> tuple[dict[str, Any], bool]:
    """The dataset ``ds_id`` with every feedback rating its base has now: the base itself when it has none, else
    a feedback version, stored once (answers (record, reused))."""
    record = datasets.get(ds_id)
    if record is None:
        raise NotFound(f"dataset {ds_id!r} does not exist")
    base = base_of(record)
    base_record = datasets.get(base) if base != ds_id else record
    if base_record is None:
        raise NotFound(f"dataset {base!r}, the base of {ds_id!r}, does not exist")
    rows = feedback.all(base)
    if not len(rows):
        return base_record, True
    new_id = version_id(base, rows)
    existing = datasets.get(new_id)
    if existing is not None:
        return existing, True
    started = time.perf_counter()
    movie_ids = datasets.artifacts.get_array(dataset_artifact(base, "movie_ids"))
    order = np.argsort(movie_ids, kind="stable")
    feedback_rows = order[np.searchsorted(movie_ids, rows.movie_ids, sorter=order)]
    merged = merge_ratings(datasets.ratings(base), rows, feedback_rows)
    datasets.put_derived(base, new_id, merged)
    summary = {"ratings": len(rows), "users": len(np.unique(rows.user_ids)), "digest": rows.digest()}
    n = len(merged.values)
    version = {
        **base_record,
        "id": new_id,
        "source": f"{base_record.get('source', base)} with {len(rows):,} feedback ratings",
        "counts": {**base_record["counts"], "users": len(merged.user_ids), "ratings": n, "ratings_kept": n},
        "created_at": utcnow_iso(),
        "ingest": {"seconds": round(time.perf_counter() - started, 3), "peak_rss_mb": None},
        "derived": {"from": base, "feedback": summary},
    }
    datasets.put(version)  # last: a record says every artifact is stored
    return version, False
