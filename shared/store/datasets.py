"""Datasets: a MovieLens directory ingested once (shared/logic/ingest.py), content-addressed, stored as artifacts.

The record (``<prefix>:dataset:<id>``, JSON) is written last, so a dataset that has a record has all its
artifacts; ``<prefix>:datasets`` indexes the records by creation time. Artifacts of dataset ``<id>``:

    dataset/<id>/movie_ids        int32 (n,)        catalogue order
    dataset/<id>/titles           JSON [str] (n)
    dataset/<id>/vocabulary       JSON [str]        unique descriptor strings
    dataset/<id>/desc_indptr      int64 (n + 1,)    descriptors of movie i: vocabulary[desc_indices[p:q]]
    dataset/<id>/desc_indices     int32 (nnz,)
    dataset/<id>/user_ids         int32 (u,)        ascending
    dataset/<id>/ratings_indptr   int64 (u + 1,)    ratings of user j: rows [p:q] of the three arrays below
    dataset/<id>/ratings_movie    int32 (r,)        catalogue index
    dataset/<id>/ratings_value    float32 (r,)
    dataset/<id>/ratings_time     int64 (r,)        timestamp, seconds since the epoch (format 2 on)

and, from format 3 on, what the descriptors are made of (``shared.ml.movielens.DescriptorParts``, field for
field), so that they can be rebuilt from the user tags written before a time (shared/logic/descriptors.py):

    dataset/<id>/terms            JSON [str]        distinct strings, sorted: genres, genome tags, user tags
    dataset/<id>/genre_indptr     int64 (n + 1,)    movie i's genres: terms[genre_indices[p:q]]
    dataset/<id>/genre_indices    int32
    dataset/<id>/genome_indptr    int64 (n + 1,)    movie i's genome tags, most relevant first
    dataset/<id>/genome_indices   int32
    dataset/<id>/in_genome        bool (n,)         the movie takes genome tags, never user tags
    dataset/<id>/tag_user         int32 (t,)        one row per tags.csv event: its userId,
    dataset/<id>/tag_movie        int32 (t,)          catalogue row,
    dataset/<id>/tag_text         int32 (t,)          tag (lower-cased, stripped) as a term,
    dataset/<id>/tag_time         int64 (t,)          timestamp

Within a user, ratings keep ratings.csv's order. ``load_ratings`` / ``DatasetStore.ratings`` read the five
ratings arrays back; a dataset ingested at format 1 (before timestamps were kept) has no ``ratings_time``
and answers ``timestamps=None``: ingest its directory again to get a format-2 dataset (a new id). One
ingested before format 3 has no descriptor parts: ``load_descriptor_parts`` answers None, and its descriptors
cannot be rebuilt (ingest it again). A derived dataset (``put_derived``) copies its source's parts, all the
tag events included, so that it can be cut again; its own descriptors may be rebuilt ones. What a
process keeps of a dataset once read (its catalogue, ids, title index) is shared/logic/catalogue.py's.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any, NamedTuple, cast

import numpy as np
import redis

from shared.errors import NotFound
from shared.infra.keys import DESCRIPTOR_PARTS, TAG_EVENT_ARRAYS, Keys, dataset_artifact
from shared.store.artifacts import ArtifactStore

FORMAT_VERSION = 3
"""Bumped whenever ingestion changes what it stores, so old ids are not mistaken for new content.

1: the first; 2: adds ``ratings_time``; 3: adds the descriptor parts (``DESCRIPTOR_PARTS``)."""
TIMESTAMPS_SINCE_FORMAT = 2
"""The first format whose datasets store ``ratings_time``."""
DESCRIPTOR_PARTS_SINCE_FORMAT = 3
"""The first format whose ingested datasets store ``DESCRIPTOR_PARTS``."""

CATALOGUE_ARRAYS = ("movie_ids", "vocabulary", "titles", "desc_indptr", "desc_indices")
"""What a derived dataset copies from its source as it is (``put_derived``)."""
JSON_ARRAYS = ("titles", "vocabulary", "terms")


class DatasetRatings(NamedTuple):
    """A stored dataset's ratings, per user (``shared.ml.movielens.Ratings`` as stored, less ``rows_read``)."""

    user_ids: np.ndarray  # (u,) int32, ascending
    indptr: np.ndarray  # (u + 1,) int64: user j's ratings are rows indptr[j]:indptr[j + 1] of the arrays below
    movie_index: np.ndarray  # (r,) int32, catalogue rows
    values: np.ndarray  # (r,) float32
    timestamps: np.ndarray | None  # (r,) int64 seconds; None when not asked for or stored (format 1)


def load_ratings(artifacts: ArtifactStore, ds_id: str, *, timestamps: bool) -> DatasetRatings:
    """The ratings arrays of dataset ``ds_id``; ``timestamps=False`` skips ``ratings_time`` (8 bytes a rating)."""

    def part(name: str) -> np.ndarray:
        return artifacts.get_array(dataset_artifact(ds_id, name))

    return DatasetRatings(
        user_ids=part("user_ids"),
        indptr=part("ratings_indptr"),
        movie_index=part("ratings_movie"),
        values=part("ratings_value"),
        timestamps=part("ratings_time") if timestamps else None,
    )


def has_descriptor_parts(artifacts: ArtifactStore, ds_id: str) -> bool:
    """Whether dataset ``ds_id`` stores its descriptor parts (ingested at format 3 on, or derived from one)."""
    return all(artifacts.exists(dataset_artifact(ds_id, name)) for name in DESCRIPTOR_PARTS)


def load_descriptor_parts(artifacts: ArtifactStore, ds_id: str) -> dict[str, Any] | None:
    """{name: array, "terms": [str]} of ``DESCRIPTOR_PARTS``; None for a dataset that has none (stored before
    format 3, or not stored at all)."""
    if not has_descriptor_parts(artifacts, ds_id):
        return None
    return {
        name: artifacts.get_json(dataset_artifact(ds_id, name))
        if name in JSON_ARRAYS
        else artifacts.get_array(dataset_artifact(ds_id, name))
        for name in DESCRIPTOR_PARTS
    }


def put_descriptor_parts(artifacts: ArtifactStore, ds_id: str, parts: Mapping[str, Any]) -> None:
    """Store ``parts`` ({name: array, "terms": [str]}, every name of ``DESCRIPTOR_PARTS``) for ``ds_id``."""
    missing = set(DESCRIPTOR_PARTS) - set(parts)
    if missing:
        raise ValueError(f"descriptor parts lack {sorted(missing)}")
    for name in DESCRIPTOR_PARTS:
        if name in JSON_ARRAYS:
            artifacts.put_json(dataset_artifact(ds_id, name), list(parts[name]))
        else:
            artifacts.put_array(dataset_artifact(ds_id, name), np.asarray(parts[name]))


class DatasetStore:
    """Dataset records and the arrays they are stored as."""

    def __init__(self, client: redis.Redis, artifacts: ArtifactStore, *, prefix: str) -> None:
        self._r = client
        self.artifacts = artifacts
        self._keys = Keys(prefix)

    def get(self, ds_id: str) -> dict[str, Any] | None:
        raw = cast("bytes | None", self._r.get(self._keys.dataset(ds_id)))
        return json.loads(raw) if raw else None

    def records(self) -> list[dict[str, Any]]:
        ids = [i.decode() for i in cast(list[bytes], self._r.zrevrange(self._keys.datasets, 0, -1))]
        records = [self.get(i) for i in ids]
        return [r for r in records if r is not None]

    def count(self) -> int:
        """How many datasets are stored (ZCARD of the index)."""
        return int(cast(int, self._r.zcard(self._keys.datasets)))

    def ratings(self, ds_id: str) -> DatasetRatings:
        """The dataset's ratings, timestamps included from format 2 on (None for a format-1 dataset).

        Not cached: at 27M ratings the arrays are ~350 MB; the caller keeps them as long as it needs.
        """
        record = self.get(ds_id)
        if record is None:
            raise NotFound(f"dataset {ds_id!r} does not exist")
        return load_ratings(self.artifacts, ds_id, timestamps=record.get("format", 1) >= TIMESTAMPS_SINCE_FORMAT)

    def put_derived(
        self,
        source: str,
        target: str,
        ratings: DatasetRatings,
        *,
        descriptors: tuple[np.ndarray, np.ndarray, list[str]] | None = None,
        tags_kept: np.ndarray | None = None,
    ) -> None:
        """The arrays of a dataset derived from ``source`` (an evaluation's training part, a feedback version):
        the source's catalogue copied as it is, and ``ratings`` of its own (timestamps included). With
        ``descriptors`` (desc_indptr, desc_indices, vocabulary), those replace the source's (same movie rows:
        shared/logic/descriptors.py rebuilds them from the tags before a cut). The source's descriptor parts,
        when it has them, are copied, their tag events only where ``tags_kept`` (a bool per event) says so:
        a training part holds no tag of its test period. Its record is the caller's, written after this."""
        a = self.artifacts
        own: dict[str, Any] = {}
        if descriptors is not None:
            indptr, indices, vocabulary = descriptors
            n = len(a.get_array(dataset_artifact(source, "movie_ids")))
            if len(indptr) != n + 1 or int(indptr[-1]) != len(indices):
                raise ValueError(f"descriptors of {len(indptr) - 1} movies for a catalogue of {n}")
            own = {"desc_indptr": np.asarray(indptr, np.int64), "desc_indices": np.asarray(indices, np.int32),
                   "vocabulary": list(vocabulary)}  # fmt: skip
        copied = CATALOGUE_ARRAYS + (DESCRIPTOR_PARTS if has_descriptor_parts(a, source) else ())
        for name in copied:
            if name in JSON_ARRAYS:
                value = own[name] if name in own else a.get_json(dataset_artifact(source, name))
                a.put_json(dataset_artifact(target, name), value)
            else:
                array = own[name] if name in own else a.get_array(dataset_artifact(source, name))
                if tags_kept is not None and name in TAG_EVENT_ARRAYS:
                    array = array[tags_kept]
                a.put_array(dataset_artifact(target, name), array)
        a.put_array(dataset_artifact(target, "user_ids"), ratings.user_ids)
        a.put_array(dataset_artifact(target, "ratings_indptr"), ratings.indptr)
        a.put_array(dataset_artifact(target, "ratings_movie"), ratings.movie_index)
        a.put_array(dataset_artifact(target, "ratings_value"), ratings.values)
        if ratings.timestamps is None:
            raise ValueError("a derived dataset keeps its ratings' timestamps")
        a.put_array(dataset_artifact(target, "ratings_time"), ratings.timestamps)

    def put(self, record: dict[str, Any]) -> None:
        pipe = self._r.pipeline(transaction=True)
        pipe.set(self._keys.dataset(record["id"]), json.dumps(record))
        pipe.zadd(self._keys.datasets, {record["id"]: time.time()})
        pipe.execute()
