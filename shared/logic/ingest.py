"""Ingesting a MovieLens directory: once per content, its arrays stored by the dataset store.

Data flow of an ingest job (``workers.cpu.ingest_dataset``):

    path (confined to the data root) ──> dataset_id = hash(input files' bytes, options, format version)
      ├─ already stored?  yes ──> answer that id, no work redone
      └─ no: read_catalogue ──> read_ratings (chunked) ──> artifacts under dataset/<id>/... ──> record
             (catalogue, its descriptor parts: genres, genome tags, every tag event; ratings)

The arrays and the record are shared/store/datasets.py's; the reading is shared/ml/movielens.py's. The record is
written last, so a dataset that has a record has all its artifacts.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from shared.errors import PathNotAllowed
from shared.infra.clock import utcnow_iso
from shared.infra.keys import DESCRIPTOR_PARTS, dataset_artifact
from shared.store.datasets import FORMAT_VERSION, DatasetStore, put_descriptor_parts

INPUT_FILES = ("movies.csv", "ratings.csv", "tags.csv", "genome-scores.csv", "genome-tags.csv", "links.csv")
MAX_TAGS_PER_MOVIE = 50
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


def ingest(
    datasets: DatasetStore,
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
    existing = datasets.get(ds_id)
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
    a = datasets.artifacts
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
    parts = catalogue.parts
    assert parts is not None  # read_catalogue's catalogue always has them
    put_descriptor_parts(a, ds_id, {name: getattr(parts, name) for name in DESCRIPTOR_PARTS})

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
    datasets.put(record)
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
