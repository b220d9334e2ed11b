"""Datasets: a MovieLens directory ingested once, content-addressed, stored as artifacts in Redis.

Data flow of an ingest job (``workers.cpu.ingest_dataset``):

    path (confined to the data root) ──> dataset_id = hash(input files' bytes, options, format version)
      ├─ already stored?  yes ──> answer that id, no work redone
      └─ no: read_catalogue ──> read_ratings (chunked) ──> artifacts under dataset/<id>/... ──> record

The record (``<prefix>:dataset:<id>``, JSON) is written last, so a dataset that has a record has all its
artifacts. Artifacts of dataset ``<id>``:

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

Within a user, ratings keep ratings.csv's order. ``load_ratings`` / ``DatasetStore.ratings`` read the five
ratings arrays back; a dataset ingested at format 1 (before timestamps were kept) has no ``ratings_time``
and answers ``timestamps=None``: ingest its directory again to get a format-2 dataset (a new id).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, cast

import numpy as np
import psutil
import redis

from shared.errors import Conflict, NotFound, PathNotAllowed
from shared.infra.keys import Keys, dataset_artifact, dataset_owned_artifacts, model_artifacts
from shared.jobs.store import utcnow_iso
from shared.ml.recommend import check_ids
from shared.ml.titles import TitleIndex
from shared.store.artifacts import ArtifactStore
from shared.store.feedback import FeedbackStore, base_of, rating_scale
from shared.store.models import ModelStore

FORMAT_VERSION = 2
"""Bumped whenever ingestion changes what it stores, so old ids are not mistaken for new content.

1: the first; 2: adds ``ratings_time``."""
TIMESTAMPS_SINCE_FORMAT = 2
"""The first format whose datasets store ``ratings_time``."""

CATALOGUE_ARRAYS = ("movie_ids", "vocabulary", "titles", "desc_indptr", "desc_indices")
"""What a derived dataset copies from its source as it is (``put_derived``)."""
JSON_ARRAYS = ("titles", "vocabulary")
INPUT_FILES = ("movies.csv", "ratings.csv", "tags.csv", "genome-scores.csv", "genome-tags.csv", "links.csv")
MAX_TAGS_PER_MOVIE = 50
CATALOGUE_CACHE = 4
"""Catalogues (for paging) a process keeps in memory."""
_HASH_BLOCK = 8 << 20

Progress = Callable[[float, str, str], None]
"""progress(fraction 0..1, stage, message)"""


def confine(path: str, *, root: Path) -> Path:
    """``path`` resolved (symlinks included) and proven to lie inside ``root``, else ``PathNotAllowed``.

    A relative path is taken from the root. The answer never says where the root is.
    """
    if not path or "\x00" in path:
        raise PathNotAllowed("path must be a non-empty string without NUL bytes")
    root = root.resolve()
    candidate = Path(path)
    try:
        resolved = (candidate if candidate.is_absolute() else root / candidate).resolve()
    except (UnicodeEncodeError, ValueError, OSError):  # e.g. a lone surrogate, which no filesystem name holds
        raise PathNotAllowed(f"path {path!r} is not a usable file name") from None
    if resolved != root and root not in resolved.parents:
        raise PathNotAllowed(f"path {path!r} is outside the data root")
    return resolved


@dataclass(frozen=True)
class DatasetOptions:
    tags_per_movie: int
    genres_fix_csv: Path | None = None


def dataset_id(directory: Path, options: DatasetOptions) -> str:
    """Content hash of the input files that exist and of the options that change the output."""
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps({"format": FORMAT_VERSION, "tags_per_movie": options.tags_per_movie}).encode())
    files = [(name, directory / name) for name in INPUT_FILES]
    if options.genres_fix_csv is not None:
        files.append(("genres_fix", options.genres_fix_csv))
    for name, path in files:
        if not path.is_file():
            continue
        h.update(f"\x00{name}\x00{path.stat().st_size}\x00".encode())
        with path.open("rb") as f:
            while block := f.read(_HASH_BLOCK):
                h.update(block)
    return "ds-" + h.hexdigest()[:24]


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


class DatasetStore:
    """Dataset records and the artifact names that hold their arrays."""

    def __init__(self, client: redis.Redis, artifacts: ArtifactStore, *, prefix: str) -> None:
        self._r = client
        self.artifacts = artifacts
        self._keys = Keys(prefix)
        self._catalogues: dict[str, list[dict[str, Any]]] = {}
        self._title_indexes: dict[str, TitleIndex] = {}
        self._ids: dict[str, tuple[frozenset[int], frozenset[int]]] = {}  # (user ids, movie ids)
        self._user_arrays: dict[str, np.ndarray] = {}  # user ids, ascending
        self._movie_rows: dict[str, dict[int, int]] = {}  # movie id -> catalogue row
        self._scales: dict[str, tuple[float, float, list[float] | None]] = {}
        self._sources: dict[str, tuple[str, ...]] = {}
        self.feedback = FeedbackStore(client, prefix=prefix)

    def get(self, ds_id: str) -> dict[str, Any] | None:
        raw = cast("bytes | None", self._r.get(self._keys.dataset(ds_id)))
        return json.loads(raw) if raw else None

    def records(self) -> list[dict[str, Any]]:
        ids = [i.decode() for i in cast(list[bytes], self._r.zrevrange(self._keys.datasets, 0, -1))]
        records = [self.get(i) for i in ids]
        return [r for r in records if r is not None]

    def check_ids(self, ds_id: str, *, user_id: int | None = None, movie_ids: list[int] | None = None) -> None:
        """NotFound unless the user and every movie id belong to the dataset (ids cached per process)."""
        if ds_id not in self._ids:
            users = self.artifacts.get_array(dataset_artifact(ds_id, "user_ids"))
            catalogue = self.artifacts.get_array(dataset_artifact(ds_id, "movie_ids")).tolist()
            self._ids[ds_id] = (frozenset(users.tolist()), frozenset(catalogue))
            self._user_arrays[ds_id] = users
            self._movie_rows[ds_id] = {m: i for i, m in enumerate(catalogue)}
        known_users, known_movies = self._ids[ds_id]
        check_ids(known_users, known_movies, user_id=user_id, movie_ids=movie_ids or [])

    def movie_ids(self, ds_id: str) -> frozenset[int]:
        """The dataset's movie ids (cached per process with its user ids)."""
        self.check_ids(ds_id)
        return self._ids[ds_id][1]

    def rating_scale(self, ds_id: str) -> tuple[float, float, list[float] | None]:
        """(lowest, highest, allowed values or None) of the dataset's ratings (``feedback.rating_scale``), cached."""
        if ds_id not in self._scales:
            self._scales[ds_id] = rating_scale(self.artifacts.get_array(dataset_artifact(ds_id, "ratings_value")))
        return self._scales[ds_id]

    def feedback_base(self, ds_id: str) -> str:
        """The dataset whose feedback ``ds_id`` reads and takes (``feedback.base_of``; itself when that base was
        deleted). NotFound for an unknown dataset."""
        record = self.get(ds_id)
        if record is None:
            raise NotFound(f"dataset {ds_id!r} does not exist")
        base = base_of(record)
        return base if base == ds_id or self.get(base) is not None else ds_id

    def feedback_sources(self, ds_id: str) -> tuple[str, ...]:
        """Where the feedback a model of ``ds_id`` serves with lives: the base of a feedback version, then the
        version itself (posts go there once its base is deleted); the dataset alone otherwise. Cached per
        process (a record never changes; a deleted base's keys are gone and read as nothing)."""
        if ds_id not in self._sources:
            record = self.get(ds_id)
            if record is None:
                raise NotFound(f"dataset {ds_id!r} does not exist")
            self._sources[ds_id] = tuple(dict.fromkeys((base_of(record), ds_id)))
        return self._sources[ds_id]

    def ratings(self, ds_id: str) -> DatasetRatings:
        """The dataset's ratings, timestamps included from format 2 on (None for a format-1 dataset).

        Not cached: at 27M ratings the arrays are ~350 MB; the caller keeps them as long as it needs.
        """
        record = self.get(ds_id)
        if record is None:
            raise NotFound(f"dataset {ds_id!r} does not exist")
        return load_ratings(self.artifacts, ds_id, timestamps=record.get("format", 1) >= TIMESTAMPS_SINCE_FORMAT)

    def user_ratings(self, ds_id: str, user_id: int) -> DatasetRatings:
        """One user's stored ratings (empty arrays for a user the dataset does not know), read without the
        other users' (``ArtifactStore.get_rows``)."""
        a = self.artifacts
        self.check_ids(ds_id)
        user_ids = self._user_arrays[ds_id]
        j = int(np.searchsorted(user_ids, user_id))
        known = j < len(user_ids) and int(user_ids[j]) == user_id
        lo, hi = a.get_rows(dataset_artifact(ds_id, "ratings_indptr"), j, j + 2).tolist() if known else (0, 0)
        record = self.get(ds_id) or {}
        timed = record.get("format", 1) >= TIMESTAMPS_SINCE_FORMAT
        return DatasetRatings(
            user_ids=np.asarray([user_id] if known else [], dtype=np.int32),
            indptr=np.asarray([0, hi - lo] if known else [0], dtype=np.int64),
            movie_index=a.get_rows(dataset_artifact(ds_id, "ratings_movie"), lo, hi),
            values=a.get_rows(dataset_artifact(ds_id, "ratings_value"), lo, hi),
            timestamps=a.get_rows(dataset_artifact(ds_id, "ratings_time"), lo, hi) if timed else None,
        )

    def movie_row(self, ds_id: str, movie_id: int) -> int:
        """The catalogue row of a movie id of the dataset (cached per process with its ids)."""
        self.check_ids(ds_id, movie_ids=[movie_id])
        return self._movie_rows[ds_id][movie_id]

    def user_ids(self, ds_id: str) -> frozenset[int]:
        """The dataset's user ids at ingest (cached per process with its movie ids)."""
        self.check_ids(ds_id)
        return self._ids[ds_id][0]

    def catalogue(self, ds_id: str) -> list[dict[str, Any]]:
        """[{movie_id, title, descriptors}] in catalogue order; cached per process (datasets never change), the
        record looked up every time, so a dataset deleted by another process is not answered from the cache."""
        if self.get(ds_id) is None:
            self.forget(ds_id)
            raise NotFound(f"dataset {ds_id!r} does not exist")
        if ds_id in self._catalogues:
            return self._catalogues[ds_id]
        a = self.artifacts
        ids = a.get_array(dataset_artifact(ds_id, "movie_ids"))
        titles = a.get_json(dataset_artifact(ds_id, "titles"))
        vocabulary = a.get_json(dataset_artifact(ds_id, "vocabulary"))
        indptr = a.get_array(dataset_artifact(ds_id, "desc_indptr"))
        indices = a.get_array(dataset_artifact(ds_id, "desc_indices"))
        rows = [
            {"movie_id": int(m), "title": t, "descriptors": [vocabulary[j] for j in indices[indptr[i] : indptr[i + 1]]]}
            for i, (m, t) in enumerate(zip(ids.tolist(), titles, strict=True))
        ]
        self._catalogues[ds_id] = rows
        while len(self._catalogues) > CATALOGUE_CACHE:
            self._catalogues.pop(next(iter(self._catalogues)))
        return rows

    def title_index(self, ds_id: str) -> TitleIndex:
        """The catalogue's titles, normalised and indexed for search (``shared.ml.titles``); built once per
        process and dataset, kept like the catalogue."""
        if ds_id in self._title_indexes:
            return self._title_indexes[ds_id]
        index = TitleIndex([m["title"] for m in self.catalogue(ds_id)])
        self._title_indexes[ds_id] = index
        while len(self._title_indexes) > CATALOGUE_CACHE:
            self._title_indexes.pop(next(iter(self._title_indexes)))
        return index

    def count(self) -> int:
        """How many datasets are stored (ZCARD of the index)."""
        return int(cast(int, self._r.zcard(self._keys.datasets)))

    def delete(self, ds_id: str, models: ModelStore) -> dict[str, Any]:
        """Delete a dataset the active model does not depend on, with the model versions trained on it.

        In one transaction that watches the active pointer: the dataset's record and index entry, and the
        records and index entries of its models; then every artifact under ``models/<version>/`` of those
        models and under ``dataset/<id>/``, ``triplets/<id>/``, ``embeddings/<id>/``, ``evaluations/<id>/``.
        Its feedback goes too. Datasets derived from it (``"derived": {"from": id}``, feedback versions too)
        are datasets of their own and stay, with their models. Answers {"deleted", "models", "keys", "bytes"};
        bytes are the MEMORY USAGE of each deleted key just before its deletion. NotFound for an unknown
        dataset, Conflict when the active model's dataset is this one."""
        if self.get(ds_id) is None:
            raise NotFound(f"dataset {ds_id!r} does not exist")
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
            n, b = self.artifacts.delete_under(name_prefix)
            keys, freed = keys + n, freed + b
        n, b = self.feedback.delete(ds_id)
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

    def put_derived(self, source: str, target: str, ratings: DatasetRatings) -> None:
        """The arrays of a dataset derived from ``source`` (an evaluation's training part, a feedback version):
        the source's catalogue copied as it is, and ``ratings`` of its own (timestamps included). Its record is
        the caller's, written after this (``put``)."""
        a = self.artifacts
        for name in CATALOGUE_ARRAYS:
            if name in JSON_ARRAYS:
                a.put_json(dataset_artifact(target, name), a.get_json(dataset_artifact(source, name)))
            else:
                a.put_array(dataset_artifact(target, name), a.get_array(dataset_artifact(source, name)))
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

    def ingest(
        self,
        directory: Path,
        options: DatasetOptions,
        *,
        source: str,
        progress: Progress,
        root: Path | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """Ingest ``directory`` unless its content is already stored; answers (record, reused).

        ``source`` is the path as the client gave it, recorded instead of the server's absolute path. With
        ``root`` (the data root; an upload's temporary folder), every input file that exists must lie inside
        it once symlinks are followed, checked before any is opened, hashing included: else PathNotAllowed
        naming the file. A dataset with no movie (or none with a descriptor) or no rating is a DataError.
        """
        from shared.ml.movielens import confine_file, read_catalogue, read_ratings  # pandas: workers only

        started = time.perf_counter()
        reset_peak_rss()
        if root is not None:
            inputs = [directory / name for name in INPUT_FILES]
            inputs += [options.genres_fix_csv] if options.genres_fix_csv is not None else []
            for path in inputs:
                if path.is_symlink() or path.exists():
                    confine_file(path, root=root)
        progress(0.02, "hashing", "hashing input files")
        ds_id = dataset_id(directory, options)
        existing = self.get(ds_id)
        if existing is not None:
            return existing, True

        progress(0.05, "catalogue", "reading movies and tags")
        catalogue = read_catalogue(
            directory, tags_per_movie=options.tags_per_movie, genres_fix_csv=options.genres_fix_csv, root=root
        )
        ratings_path = directory / "ratings.csv"
        total_bytes = max(1, ratings_path.stat().st_size) if ratings_path.is_file() else 1
        approx_row_bytes = 24.0

        def on_chunk(rows: int) -> None:
            done = min(1.0, rows * approx_row_bytes / total_bytes)
            progress(0.2 + 0.6 * done, "ratings", f"{rows:,} ratings read")

        progress(0.2, "ratings", "reading ratings")
        ratings = read_ratings(ratings_path, catalogue.movie_ids, on_chunk=on_chunk, root=root)

        progress(0.85, "storing", "storing arrays")
        a = self.artifacts
        a.put_array(dataset_artifact(ds_id, "movie_ids"), catalogue.movie_ids)
        a.put_json(dataset_artifact(ds_id, "titles"), catalogue.titles)
        a.put_json(dataset_artifact(ds_id, "vocabulary"), catalogue.vocabulary)
        a.put_array(dataset_artifact(ds_id, "desc_indptr"), catalogue.desc_indptr)
        a.put_array(dataset_artifact(ds_id, "desc_indices"), catalogue.desc_indices)
        a.put_array(dataset_artifact(ds_id, "user_ids"), ratings.user_ids)
        a.put_array(dataset_artifact(ds_id, "ratings_indptr"), ratings.indptr)
        a.put_array(dataset_artifact(ds_id, "ratings_movie"), ratings.movie_index)
        a.put_array(dataset_artifact(ds_id, "ratings_value"), ratings.values)
        a.put_array(dataset_artifact(ds_id, "ratings_time"), ratings.timestamps)

        record = {
            "id": ds_id,
            "source": source,
            "options": {
                "tags_per_movie": options.tags_per_movie,
                "genres_fix_csv": options.genres_fix_csv.name if options.genres_fix_csv else None,
            },
            "counts": {
                "movies": len(catalogue.movie_ids),
                "dropped": catalogue.dropped,
                "movies_total": catalogue.movies_total,
                "users": len(ratings.user_ids),
                "ratings": ratings.rows_read,
                "ratings_kept": ratings.kept,
                "vocabulary": len(catalogue.vocabulary),
                "descriptors": len(catalogue.desc_indices),
            },
            "tag_source": catalogue.tag_source,
            "created_at": utcnow_iso(),
            "ingest": {
                "seconds": round(time.perf_counter() - started, 3),
                "peak_rss_mb": round(peak_rss_bytes() / 2**20, 1),
            },
            "format": FORMAT_VERSION,
        }
        self.put(record)
        return record, False


def reset_peak_rss() -> None:
    """Start this process's peak-RSS count afresh (a prefork child runs many tasks)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (Linux ``VmHWM``)."""
    try:
        with open(f"/proc/{os.getpid()}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(psutil.Process().memory_info().rss)
