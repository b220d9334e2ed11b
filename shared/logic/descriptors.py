"""A dataset's descriptors rebuilt from only the user tags written before a cut (issue #24: no leak through
descriptors): an evaluation's training part must not describe a movie by a tag written after that part ends.

    dataset (ingested at format 3 on, or derived from one): its descriptor parts (shared/store/datasets.py)
      │   per movie: genres, genome tags (no time: kept whole)       per tags.csv event: user, movie, tag, time
      ▼
    cut_of_user(each tagging user) ──> the event's cut; kept when its time < the cut
      │       per-user split: the user's first test rating (``per_user_cuts``); global split: one time for all;
      │       a user with no cut (NO_CUT: no training part, or no rating at all) keeps none of their tags
      ▼
    shared.ml.movielens.descriptors_from(parts, kept, tags_per_movie) ──> desc_indptr, desc_indices, vocabulary
      ▼
    DatasetStore.put_derived(source, training dataset, ratings, descriptors=...)   (the caller's)

The rows are the dataset's catalogue rows, whatever is cut: a movie whose only descriptors were user tags, all
written after the cut, keeps an empty row (its encoder vector is then zero, ``mean_by_rows``; mining sees it
share nothing). With every event kept the rebuild is the dataset's own arrays, exactly. A dataset stored
before format 3 has no tag events: ``descriptors_before`` refuses it (Conflict); a caller that would rather
keep its descriptors asks ``has_descriptor_parts`` first and says so where it reports.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from shared.errors import Conflict, NotFound
from shared.infra.keys import dataset_artifact
from shared.ml.movielens import DescriptorParts, descriptors_from, index_of
from shared.store.artifacts import ArtifactStore
from shared.store.datasets import DatasetRatings, load_descriptor_parts

NO_CUT = int(np.iinfo(np.int64).min)
"""The cut of a user who has none: no timestamp is below it, so none of their tags is kept."""
NO_END = int(np.iinfo(np.int64).max)
"""The cut of a user whose every rating is in the training part: every tag of theirs is kept."""

CutOfUser = Callable[[np.ndarray], np.ndarray] | tuple[np.ndarray, np.ndarray]
"""Either a function of (k,) user ids answering (k,) int64 cuts (NO_CUT: none), or (user_ids, cuts) arrays, a
user not among them having no cut."""


@dataclass(frozen=True)
class CutDescriptors:
    """Descriptors rebuilt from the tags before a cut, and what the cut took away."""

    desc_indptr: np.ndarray  # (n + 1,) int64, the dataset's catalogue rows
    desc_indices: np.ndarray  # (nnz,) int32, into vocabulary
    vocabulary: list[str]  # unique descriptor strings, in order of first appearance
    kept: np.ndarray  # (events,) bool: the tag events written before their user's cut
    stats: dict[str, int]
    """tags: events stored; kept: written before their user's cut; after_cut: at or after it; no_cut: of users
    with no cut (tags = kept + after_cut + no_cut); changed: movies whose descriptors differ from the
    dataset's; emptied: movies that had descriptors and now have none."""

    @property
    def descriptors(self) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """What ``DatasetStore.put_derived(..., descriptors=)`` takes."""
        return self.desc_indptr, self.desc_indices, self.vocabulary


def per_user_cuts(ratings: DatasetRatings, train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(user ids, cuts) of the users with a training rating (``train``, (r,) bool over ``ratings``): a user's
    cut is the time of their first rating outside the training part (NO_END when there is none). Users with
    no training rating (too few ratings for the split) are left out: they have no cut."""
    if ratings.timestamps is None:
        raise ValueError("per-user cuts need the ratings' timestamps")
    train = np.asarray(train, dtype=bool)
    counts = np.diff(ratings.indptr)
    owner = np.repeat(np.arange(len(counts)), counts)  # (r,) row of each rating's user
    first_test = np.full(len(counts), NO_END, dtype=np.int64)
    np.minimum.at(first_test, owner[~train], ratings.timestamps[~train])
    trained = np.bincount(owner[train], minlength=len(counts)) > 0
    return ratings.user_ids[trained].astype(np.int32), first_test[trained]


def event_cuts(users: np.ndarray, cut_of_user: CutOfUser) -> np.ndarray:
    """(t,) int64: the cut of each event's user."""
    distinct, inverse = np.unique(users, return_inverse=True)
    if callable(cut_of_user):
        cuts = np.asarray(cut_of_user(distinct), dtype=np.int64)
        if cuts.shape != distinct.shape:
            raise ValueError(f"cut_of_user answered shape {cuts.shape} for {len(distinct)} users")
    else:
        ids, given = (np.asarray(a) for a in cut_of_user)
        if ids.shape != given.shape:
            raise ValueError(f"{len(ids)} user ids for {len(given)} cuts")
        at = index_of(ids, distinct)  # (k,) position among the given users, -1: not given
        cuts = np.full(len(distinct), NO_CUT, dtype=np.int64)
        cuts[at >= 0] = given.astype(np.int64)[at[at >= 0]]
    return np.asarray(cuts[inverse.reshape(-1)], dtype=np.int64)


def _rows_changed(a_ptr: np.ndarray, a_str: np.ndarray, b_ptr: np.ndarray, b_str: np.ndarray) -> int:
    """How many rows of two CSRs of string ids differ (length or any entry)."""
    a_len, b_len = np.diff(a_ptr), np.diff(b_ptr)
    same = a_len == b_len
    a_at = np.repeat(same, a_len)  # (nnz,) entries of same-length rows: they align one to one
    b_at = np.repeat(same, b_len)
    mismatch = a_str[a_at] != b_str[b_at]
    rows = np.repeat(np.flatnonzero(same), a_len[same])
    differ = ~same
    differ[rows[mismatch]] = True
    return int(differ.sum())


def descriptors_before(
    artifacts: ArtifactStore, dataset: str, cut_of_user: CutOfUser, *, tags_per_movie: int
) -> CutDescriptors:
    """``dataset``'s descriptors from genres, genome tags and only the user-tag events written before their
    user's cut. ``tags_per_movie``: the dataset's (its record's options); NotFound for no such dataset,
    Conflict for one stored without tag events (before format 3)."""
    if not artifacts.exists(dataset_artifact(dataset, "movie_ids")):
        raise NotFound(f"dataset {dataset!r} does not exist")
    stored = load_descriptor_parts(artifacts, dataset)
    if stored is None:
        raise Conflict(
            f"dataset {dataset!r} was stored before tag events were kept (format < 3), so its descriptors cannot "
            "be rebuilt from the tags before a cut: re-ingest its directory (POST /v1/datasets)",
            details={"dataset": dataset},
        )
    parts = DescriptorParts(**stored)
    cuts = event_cuts(parts.tag_user, cut_of_user)
    kept = parts.tag_time < cuts
    no_cut = cuts == NO_CUT
    rebuilt = descriptors_from(parts, kept, tags_per_movie=tags_per_movie)

    old_ptr = artifacts.get_array(dataset_artifact(dataset, "desc_indptr"))
    old_idx = artifacts.get_array(dataset_artifact(dataset, "desc_indices"))
    old_vocab: list[str] = artifacts.get_json(dataset_artifact(dataset, "vocabulary"))
    joint: dict[str, int] = {s: i for i, s in enumerate(old_vocab)}
    new_ids = np.asarray([joint.setdefault(s, len(joint)) for s in rebuilt.vocabulary], dtype=np.int64)
    changed = _rows_changed(old_ptr, old_idx.astype(np.int64), rebuilt.indptr, new_ids[rebuilt.indices])
    emptied = int(((np.diff(old_ptr) > 0) & (np.diff(rebuilt.indptr) == 0)).sum())
    stats = {
        "tags": len(kept),
        "kept": int(kept.sum()),
        "after_cut": int((~kept & ~no_cut).sum()),
        "no_cut": int(no_cut.sum()),
        "changed": changed,
        "emptied": emptied,
    }
    return CutDescriptors(rebuilt.indptr, rebuilt.indices, rebuilt.vocabulary, kept, stats)
