"""Descriptor parts stored at ingest in a real Redis, copied by a derived dataset, and descriptors rebuilt from
the tags before a cut (shared/logic/descriptors.py) on a small generated dataset."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from cli.synth import SynthSpec, write_synthetic
from shared.errors import Conflict, NotFound
from shared.infra.keys import DESCRIPTOR_PARTS, dataset_artifact
from shared.infra.settings import Settings
from shared.logic.descriptors import NO_END, descriptors_before, per_user_cuts
from shared.logic.ingest import DatasetOptions, ingest
from shared.logic.services import Services
from shared.ml.movielens import DescriptorParts, descriptors_from, read_catalogue
from shared.store.datasets import (
    FORMAT_VERSION,
    DatasetRatings,
    has_descriptor_parts,
    load_descriptor_parts,
)

K = 3


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    write_synthetic(out, SynthSpec(movies=300, users=60, ratings=4000, genome=True, seed=11))
    return out


@pytest.fixture
def svc(settings: Settings, fresh_prefix: str) -> Services:
    return Services.from_settings(settings.model_copy(update={"key_prefix": fresh_prefix}))


@pytest.fixture
def record(svc: Services, generated: Path) -> dict[str, Any]:
    record, _ = ingest(svc.datasets, generated, DatasetOptions(tags_per_movie=K), source="g", progress=lambda *_: None)
    return record


def stored(svc: Services, ds: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    a = svc.artifacts
    return (
        a.get_array(dataset_artifact(ds, "desc_indptr")),
        a.get_array(dataset_artifact(ds, "desc_indices")),
        a.get_json(dataset_artifact(ds, "vocabulary")),
    )


def test_ingest_stores_the_catalogues_descriptor_parts(svc: Services, generated: Path, record: dict[str, Any]) -> None:
    assert record["format"] == FORMAT_VERSION == 3
    catalogue = read_catalogue(generated, tags_per_movie=K)
    assert catalogue.parts is not None
    parts = load_descriptor_parts(svc.artifacts, record["id"])
    assert parts is not None and set(parts) == set(DESCRIPTOR_PARTS)
    assert parts["terms"] == catalogue.parts.terms
    for name in DESCRIPTOR_PARTS[1:]:
        want = getattr(catalogue.parts, name)
        assert parts[name].dtype == want.dtype and np.array_equal(parts[name], want), name
    assert len(parts["tag_time"]) == len(catalogue.parts.tag_time) > 0
    assert record["tag_source"] == "genome+tags"  # both kinds of movie are here


def test_every_tag_kept_rebuilds_the_stored_descriptors(svc: Services, record: dict[str, Any]) -> None:
    ds = record["id"]
    got = descriptors_before(svc.artifacts, ds, lambda users: np.full(len(users), NO_END), tags_per_movie=K)
    indptr, indices, vocabulary = stored(svc, ds)
    assert np.array_equal(got.desc_indptr, indptr) and np.array_equal(got.desc_indices, indices)
    assert got.vocabulary == vocabulary
    tags = len(svc.artifacts.get_array(dataset_artifact(ds, "tag_time")))
    assert got.stats == {"tags": tags, "kept": tags, "after_cut": 0, "no_cut": 0, "changed": 0, "emptied": 0}


def test_the_per_user_cut_keeps_only_earlier_tags_and_a_derived_dataset_stores_them(
    svc: Services, record: dict[str, Any]
) -> None:
    ds = record["id"]
    ratings = svc.datasets.ratings(ds)
    assert ratings.timestamps is not None
    # the training part: each user's first 80% by time, users with >= 10 ratings (as the temporal split)
    counts = np.diff(ratings.indptr)
    owner = np.repeat(np.arange(len(counts)), counts)
    order = np.lexsort((np.arange(len(owner)), ratings.timestamps, owner))
    rank = np.empty(len(owner), dtype=np.int64)
    rank[order] = np.arange(len(owner)) - ratings.indptr[owner[order]]
    train = (counts >= 10)[owner] & (rank < np.round(0.8 * counts)[owner])
    users, cuts = per_user_cuts(ratings, train)
    got = descriptors_before(svc.artifacts, ds, (users, cuts), tags_per_movie=K)

    parts = load_descriptor_parts(svc.artifacts, ds)
    assert parts is not None
    cut_of = dict(zip(users.tolist(), cuts.tolist(), strict=True))
    event_cut = np.array([cut_of.get(u, np.iinfo(np.int64).min) for u in parts["tag_user"].tolist()])
    kept = parts["tag_time"] < event_cut
    s = got.stats
    assert s["tags"] == len(kept) and s["kept"] == kept.sum() and s["kept"] + s["after_cut"] + s["no_cut"] == s["tags"]
    assert s["after_cut"] > 0 and s["changed"] > 0
    assert s["no_cut"] == sum(u not in cut_of for u in parts["tag_user"].tolist())

    # the training dataset: its own descriptors, the source's parts (all of its events) copied to cut again
    part = DatasetRatings(ratings.user_ids, ratings.indptr, ratings.movie_index, ratings.values, ratings.timestamps)
    svc.datasets.put_derived(ds, "ds-derived-test", part, descriptors=got.descriptors)
    indptr, indices, vocabulary = stored(svc, "ds-derived-test")
    assert np.array_equal(indptr, got.desc_indptr) and np.array_equal(indices, got.desc_indices)
    assert vocabulary == got.vocabulary != stored(svc, ds)[2]
    copied = load_descriptor_parts(svc.artifacts, "ds-derived-test")
    assert copied is not None and copied["terms"] == parts["terms"]
    assert all(np.array_equal(copied[n], parts[n]) for n in DESCRIPTOR_PARTS[1:])
    for name in ("movie_ids", "titles"):
        assert svc.artifacts.get_bytes(dataset_artifact(ds, name)) == svc.artifacts.get_bytes(
            dataset_artifact("ds-derived-test", name)
        )
    # a split of the split: an earlier cut of the derived dataset is that cut of the source
    earlier = (users, cuts - 86_400 * 365)
    again = descriptors_before(svc.artifacts, "ds-derived-test", earlier, tags_per_movie=K)
    direct = descriptors_before(svc.artifacts, ds, earlier, tags_per_movie=K)
    assert np.array_equal(again.desc_indptr, direct.desc_indptr)
    assert np.array_equal(again.desc_indices, direct.desc_indices) and again.vocabulary == direct.vocabulary
    assert again.stats["kept"] == direct.stats["kept"] <= s["kept"]
    # and the pure rebuild from the parts gives the same arrays
    pure = descriptors_from(DescriptorParts(**parts), kept, tags_per_movie=K)
    assert np.array_equal(pure.indptr, got.desc_indptr) and pure.vocabulary == got.vocabulary


def test_a_dataset_stored_before_format_3_cannot_be_rebuilt(
    svc: Services, record: dict[str, Any], redis_client: redis.Redis
) -> None:
    ds = record["id"]
    # what a dataset ingested before tag events were kept looks like: format 2, no descriptor parts
    for name in DESCRIPTOR_PARTS:
        svc.artifacts.delete(dataset_artifact(ds, name))
    redis_client.set(svc.keys.dataset(ds), json.dumps({**record, "format": 2}))
    assert not has_descriptor_parts(svc.artifacts, ds) and load_descriptor_parts(svc.artifacts, ds) is None
    with pytest.raises(Conflict, match="cannot be rebuilt"):
        descriptors_before(svc.artifacts, ds, lambda u: np.full(len(u), NO_END), tags_per_movie=K)
    # a dataset derived from it copies the catalogue and has no parts either
    svc.datasets.put_derived(ds, "ds-derived-old", svc.datasets.ratings(ds))
    assert not has_descriptor_parts(svc.artifacts, "ds-derived-old")
    assert np.array_equal(stored(svc, "ds-derived-old")[0], stored(svc, ds)[0])


def test_descriptors_of_an_unknown_dataset_are_not_found_and_wrong_shapes_are_refused(
    svc: Services, record: dict[str, Any]
) -> None:
    with pytest.raises(NotFound):
        descriptors_before(svc.artifacts, "ds-000000000000000000000000", (np.zeros(0), np.zeros(0)), tags_per_movie=K)
    indptr, indices, vocabulary = stored(svc, record["id"])
    with pytest.raises(ValueError, match="descriptors of"):
        svc.datasets.put_derived(
            record["id"], "ds-x", svc.datasets.ratings(record["id"]), descriptors=(indptr[:-1], indices, vocabulary)
        )
