"""What a process keeps of each dataset it reads, loaded once: its catalogue, ids, title index, rating scale.

    DatasetStore (records and arrays, shared/store/datasets.py) ──> Catalogue ──> the API's reads and checks
    FeedbackStore (shared/store/feedback.py)                    ──┘   (catalogue pages, title search, the ids
                                                                      a request may name, a user's ratings)

A dataset never changes once stored, so nothing here goes stale but a deleted dataset: ``movies`` looks its
record up on every call, ``delete`` forgets what this process kept, and another process keeps its copy until
it finds the record gone. Deleting a dataset takes its model versions, artifacts and feedback with it.
"""

from __future__ import annotations

from typing import Any, TypeVar

import numpy as np

from shared.errors import Conflict, NotFound
from shared.infra.keys import Keys, dataset_artifact, dataset_owned_artifacts, model_artifacts
from shared.ml.recommend import check_ids
from shared.ml.titles import TitleIndex
from shared.store.datasets import TIMESTAMPS_SINCE_FORMAT, DatasetRatings, DatasetStore
from shared.store.feedback import FeedbackStore, base_of, rating_scale
from shared.store.models import ModelStore

CATALOGUE_CACHE = 4
"""Catalogues (for paging) and title indexes a process keeps in memory."""

T = TypeVar("T")


class Catalogue:
    """Each dataset's catalogue, ids and title index, loaded once per process (datasets never change)."""

    def __init__(self, datasets: DatasetStore, feedback: FeedbackStore, models: ModelStore, *, prefix: str) -> None:
        self._datasets = datasets
        self._feedback = feedback
        self._models = models
        self._keys = Keys(prefix)
        self._catalogues: dict[str, list[dict[str, Any]]] = {}
        self._title_indexes: dict[str, TitleIndex] = {}
        self._ids: dict[str, tuple[frozenset[int], frozenset[int]]] = {}  # (user ids, movie ids)
        self._user_arrays: dict[str, np.ndarray] = {}  # user ids, ascending
        self._movie_rows: dict[str, dict[int, int]] = {}  # movie id -> catalogue row
        self._scales: dict[str, tuple[float, float, list[float] | None]] = {}
        self._sources: dict[str, tuple[str, ...]] = {}

    def check_ids(self, ds_id: str, *, user_id: int | None = None, movie_ids: list[int] | None = None) -> None:
        """NotFound unless the user and every movie id belong to the dataset (ids cached per process)."""
        if ds_id not in self._ids:
            users = self._datasets.artifacts.get_array(dataset_artifact(ds_id, "user_ids"))
            catalogue = self._datasets.artifacts.get_array(dataset_artifact(ds_id, "movie_ids")).tolist()
            self._ids[ds_id] = (frozenset(users.tolist()), frozenset(catalogue))
            self._user_arrays[ds_id] = users
            self._movie_rows[ds_id] = {m: i for i, m in enumerate(catalogue)}
        known_users, known_movies = self._ids[ds_id]
        check_ids(known_users, known_movies, user_id=user_id, movie_ids=movie_ids or [])

    def movie_ids(self, ds_id: str) -> frozenset[int]:
        """The dataset's movie ids (cached per process with its user ids)."""
        self.check_ids(ds_id)
        return self._ids[ds_id][1]

    def user_ids(self, ds_id: str) -> frozenset[int]:
        """The dataset's user ids at ingest (cached per process with its movie ids)."""
        self.check_ids(ds_id)
        return self._ids[ds_id][0]

    def movie_row(self, ds_id: str, movie_id: int) -> int:
        """The catalogue row of a movie id of the dataset (cached per process with its ids)."""
        self.check_ids(ds_id, movie_ids=[movie_id])
        return self._movie_rows[ds_id][movie_id]

    def rating_scale(self, ds_id: str) -> tuple[float, float, list[float] | None]:
        """(lowest, highest, allowed values or None) of the dataset's ratings (``feedback.rating_scale``), cached."""
        if ds_id not in self._scales:
            values = self._datasets.artifacts.get_array(dataset_artifact(ds_id, "ratings_value"))
            self._scales[ds_id] = rating_scale(values)
        return self._scales[ds_id]

    def feedback_base(self, ds_id: str) -> str:
        """The dataset whose feedback ``ds_id`` reads and takes (``feedback.base_of``; itself when that base was
        deleted). NotFound for an unknown dataset."""
        record = self._datasets.get(ds_id)
        if record is None:
            raise NotFound(f"dataset {ds_id!r} does not exist")
        base = base_of(record)
        return base if base == ds_id or self._datasets.get(base) is not None else ds_id

    def feedback_sources(self, ds_id: str) -> tuple[str, ...]:
        """Where the feedback a model of ``ds_id`` serves with lives: the base of a feedback version, then the
        version itself (posts go there once its base is deleted); the dataset alone otherwise. Cached per
        process (a record never changes; a deleted base's keys are gone and read as nothing)."""
        if ds_id not in self._sources:
            record = self._datasets.get(ds_id)
            if record is None:
                raise NotFound(f"dataset {ds_id!r} does not exist")
            self._sources[ds_id] = tuple(dict.fromkeys((base_of(record), ds_id)))
        return self._sources[ds_id]

    def user_ratings(self, ds_id: str, user_id: int) -> DatasetRatings:
        """One user's stored ratings (empty arrays for a user the dataset does not know), read without the
        other users' (``ArtifactStore.get_rows``)."""
        a = self._datasets.artifacts
        self.check_ids(ds_id)
        user_ids = self._user_arrays[ds_id]
        j = int(np.searchsorted(user_ids, user_id))
        known = j < len(user_ids) and int(user_ids[j]) == user_id
        lo, hi = a.get_rows(dataset_artifact(ds_id, "ratings_indptr"), j, j + 2).tolist() if known else (0, 0)
        record = self._datasets.get(ds_id) or {}
        timed = record.get("format", 1) >= TIMESTAMPS_SINCE_FORMAT
        return DatasetRatings(
            user_ids=np.asarray([user_id] if known else [], dtype=np.int32),
            indptr=np.asarray([0, hi - lo] if known else [0], dtype=np.int64),
            movie_index=a.get_rows(dataset_artifact(ds_id, "ratings_movie"), lo, hi),
            values=a.get_rows(dataset_artifact(ds_id, "ratings_value"), lo, hi),
            timestamps=a.get_rows(dataset_artifact(ds_id, "ratings_time"), lo, hi) if timed else None,
        )

    def movies(self, ds_id: str) -> list[dict[str, Any]]:
        """[{movie_id, title, descriptors}] in catalogue order; cached per process (datasets never change), the
        record looked up every time, so a dataset deleted by another process is not answered from the cache."""
        if self._datasets.get(ds_id) is None:
            self.forget(ds_id)
            raise NotFound(f"dataset {ds_id!r} does not exist")
        if ds_id in self._catalogues:
            return self._catalogues[ds_id]
        a = self._datasets.artifacts
        ids = a.get_array(dataset_artifact(ds_id, "movie_ids"))
        titles = a.get_json(dataset_artifact(ds_id, "titles"))
        vocabulary = a.get_json(dataset_artifact(ds_id, "vocabulary"))
        indptr = a.get_array(dataset_artifact(ds_id, "desc_indptr"))
        indices = a.get_array(dataset_artifact(ds_id, "desc_indices"))
        rows = [
            {"movie_id": int(m), "title": t, "descriptors": [vocabulary[j] for j in indices[indptr[i] : indptr[i + 1]]]}
            for i, (m, t) in enumerate(zip(ids.tolist(), titles, strict=True))
        ]
        return _kept(self._catalogues, ds_id, rows)

    def title_index(self, ds_id: str) -> TitleIndex:
        """The catalogue's titles, normalised and indexed for search (``shared.ml.titles``); built once per
        process and dataset, kept like the catalogue."""
        if ds_id in self._title_indexes:
            return self._title_indexes[ds_id]
        return _kept(self._title_indexes, ds_id, TitleIndex([m["title"] for m in self.movies(ds_id)]))

    def delete(self, ds_id: str) -> dict[str, Any]:
        """Delete a dataset the active model does not depend on, with the model versions trained on it.

        In one transaction that watches the active pointer: the dataset's record and index entry, and the
        records and index entries of its models; then every artifact under ``models/<version>/`` of those
        models and under ``dataset/<id>/``, ``triplets/<id>/``, ``embeddings/<id>/``, ``evaluations/<id>/``.
        Its feedback goes too. Datasets derived from it (``"derived": {"from": id}``, feedback versions too)
        are datasets of their own and stay, with their models. Answers {"deleted", "models", "keys", "bytes"};
        bytes are the MEMORY USAGE of each deleted key just before its deletion. NotFound for an unknown
        dataset, Conflict when the active model's dataset is this one."""
        if self._datasets.get(ds_id) is None:
            raise NotFound(f"dataset {ds_id!r} does not exist")
        models = self._models
        versions = [r["version"] for r in models.records() if r.get("dataset") == ds_id]

        def check(active: str | None) -> None:
            record = models.get(active) if active else None
            if record is not None and record.get("dataset") == ds_id:
                raise Conflict(
                    f"dataset {ds_id!r} is the dataset of the active model {active!r}: activate a model of "
                    "another dataset first, then delete it",
                    details={"active": active},
                )

        keys, freed = models.delete_guarded(
            check, versions=versions, keys=[self._keys.dataset(ds_id)], index=(self._keys.datasets, ds_id)
        )
        for name_prefix in [*(model_artifacts(v) for v in versions), *dataset_owned_artifacts(ds_id)]:
            n, b = self._datasets.artifacts.delete_under(name_prefix)
            keys, freed = keys + n, freed + b
        n, b = self._feedback.delete(ds_id)
        keys, freed = keys + n, freed + b
        self.forget(ds_id)
        return {"deleted": ds_id, "models": versions, "keys": keys, "bytes": freed}

    def forget(self, ds_id: str) -> None:
        """Drop this process's cached catalogue, title index and ids of a dataset."""
        self._catalogues.pop(ds_id, None)
        self._title_indexes.pop(ds_id, None)
        self._ids.pop(ds_id, None)
        self._user_arrays.pop(ds_id, None)
        self._movie_rows.pop(ds_id, None)
        self._scales.pop(ds_id, None)


def _kept(cache: dict[str, T], ds_id: str, value: T) -> T:
    """``value`` cached under ``ds_id``, the oldest entries dropped past ``CATALOGUE_CACHE``."""
    cache[ds_id] = value
    while len(cache) > CATALOGUE_CACHE:
        cache.pop(next(iter(cache)))
    return value
