"""Mining against a brute-force reference that follows the notebook's code: sets and sorted lists."""

from __future__ import annotations

import numpy as np
import pytest

from cli.synth import SynthSpec, write_synthetic
from shared.ml.mining import NOTEBOOK_POOL, build_incidence, draws, mine_range
from shared.ml.movielens import Catalogue, read_catalogue
from tests.helpers import SMALL


def reference(catalogue: Catalogue, seed: int) -> tuple[list[int], list[int], list[list[int]]]:
    """Per anchor: the positive, the notebook negative, and the set of minimum-overlap movies."""
    n = len(catalogue.movie_ids)
    sets = [{d.lower() for d in catalogue.descriptors(i)} for i in range(n)]
    positives, notebook, minimal = [], [], []
    for a in range(n):
        scored = [(len(sets[a] & sets[b]), b) for b in range(n) if b != a]
        ranked = sorted(scored, key=lambda ob: -ob[0])  # stable: ties keep catalogue order
        positive = ranked[0][1]
        rest = sorted([ob for ob in scored if ob[1] != positive], key=lambda ob: ob[0])
        pool = rest[:NOTEBOOK_POOL]
        u = draws(seed, np.array([a]), 0)[0]
        positives.append(positive)
        notebook.append(pool[min(int(u * len(pool)), len(pool) - 1)][1])
        lowest = rest[0][0]
        minimal.append([b for o, b in rest if o == lowest])
    return positives, notebook, minimal


def cut(catalogue: Catalogue, n: int, *, step: int = 1) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The first n movies (every step-th) of a catalogue, as mining inputs."""
    rows = list(range(0, len(catalogue.movie_ids), step))[:n]
    indptr, indices = [0], []
    for r in rows:
        lo, hi = catalogue.desc_indptr[r], catalogue.desc_indptr[r + 1]
        indices.extend(catalogue.desc_indices[lo:hi].tolist())
        indptr.append(len(indices))
    return np.array(indptr), np.array(indices, dtype=np.int32), catalogue.vocabulary


def as_catalogue(indptr: np.ndarray, indices: np.ndarray, vocabulary: list[str]) -> Catalogue:
    n = len(indptr) - 1
    return Catalogue(np.arange(n, dtype=np.int32), [""] * n, indptr, indices, vocabulary, n, "tags")


@pytest.fixture(scope="module")
def small() -> Catalogue:
    return read_catalogue(SMALL, tags_per_movie=5)


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Catalogue:
    out = tmp_path_factory.mktemp("synth")
    write_synthetic(out, SynthSpec(movies=500, users=100, ratings=6000, genome=True, seed=5))
    return read_catalogue(out, tags_per_movie=5)


@pytest.mark.parametrize(("source", "step"), [("small", 1), ("small", 31), ("generated", 1)])
def test_positives_and_negatives_match_the_reference(request: pytest.FixtureRequest, source: str, step: int) -> None:
    indptr, indices, vocabulary = cut(request.getfixturevalue(source), 300, step=step)
    catalogue = as_catalogue(indptr, indices, vocabulary)
    positives, notebook, minimal = reference(catalogue, seed=42)
    inc = build_incidence(indptr, indices, vocabulary, dense_columns=8)
    n = len(indptr) - 1

    nb = mine_range(inc, 0, n, seed=42, strategy="notebook", block=64)
    assert nb.triplets[:, 1].tolist() == positives
    assert nb.triplets[:, 2].tolist() == notebook

    um = mine_range(inc, 0, n, seed=42, strategy="uniform-min", block=64)
    assert um.triplets[:, 1].tolist() == positives
    assert all(neg in minimal[a] for a, neg in enumerate(um.triplets[:, 2].tolist()))
    # Uniform over all minimum-overlap movies, not the same few: many distinct negatives.
    assert len(set(um.triplets[:, 2].tolist())) > 3 * len(set(nb.triplets[:, 2].tolist()))


def test_semi_hard_negatives_lie_between_minimum_and_positive(small: Catalogue) -> None:
    indptr, indices, vocabulary = cut(small, 300, step=7)
    inc = build_incidence(indptr, indices, vocabulary)
    sets = [{vocabulary[j].lower() for j in indices[indptr[i] : indptr[i + 1]]} for i in range(300)]
    result = mine_range(inc, 0, 300, seed=1, strategy="semi-hard")
    strictly_between = 0
    for (a, p, neg), po, no in zip(result.triplets, result.positive_overlap, result.negative_overlap, strict=True):
        others = [len(sets[a] & sets[b]) for b in range(300) if b not in (a, p)]
        assert no == len(sets[a] & sets[neg]) and po == len(sets[a] & sets[p])
        if any(min(others) < o < po for o in others):
            assert min(others) < no < po
            strictly_between += 1
        else:
            assert no == min(others)
    assert strictly_between > 100


def test_dense_and_sparse_split_does_not_change_overlaps(small: Catalogue) -> None:
    indptr, indices, vocabulary = cut(small, 200)
    a = build_incidence(indptr, indices, vocabulary, dense_columns=0)
    b = build_incidence(indptr, indices, vocabulary, dense_columns=500)
    from shared.ml.mining import overlaps

    np.testing.assert_array_equal(overlaps(a, 0, 200), overlaps(b, 0, 200))


@pytest.mark.parametrize("strategy", ["uniform-min", "notebook", "semi-hard"])
def test_any_cut_into_ranges_gives_identical_bytes(generated: Catalogue, strategy: str) -> None:
    inc = build_incidence(generated.desc_indptr, generated.desc_indices, generated.vocabulary)
    n = inc.n
    whole = mine_range(inc, 0, n, seed=7, strategy=strategy).triplets
    for size in (37, 100, 333):
        parts = [
            mine_range(inc, lo, min(lo + size, n), seed=7, strategy=strategy, block=50) for lo in range(0, n, size)
        ]
        assert np.concatenate([p.triplets for p in parts]).tobytes() == whole.tobytes()
    other_seed = mine_range(inc, 0, n, seed=8, strategy=strategy).triplets
    assert (other_seed[:, 1] == whole[:, 1]).all()
    if strategy != "notebook":
        assert (other_seed[:, 2] != whole[:, 2]).any()


def test_draws_are_uniform_and_independent_of_batching() -> None:
    anchors = np.arange(100_000)
    u = draws(3, anchors, 1)
    assert u.min() >= 0.0 and u.max() < 1.0
    assert abs(u.mean() - 0.5) < 0.01
    np.testing.assert_array_equal(u[500:600], draws(3, anchors[500:600], 1))
    assert not np.array_equal(u, draws(3, anchors, 2))


def test_column_tiles_do_not_change_the_answer(generated: Catalogue, monkeypatch: pytest.MonkeyPatch) -> None:
    import shared.ml.mining as mining

    inc = build_incidence(generated.desc_indptr, generated.desc_indices, generated.vocabulary)
    expected = mine_range(inc, 0, inc.n, seed=2, strategy="notebook").triplets
    monkeypatch.setattr(mining, "TILE", 7)  # ties across tile borders must still go to the earliest movie
    assert mine_range(inc, 0, inc.n, seed=2, strategy="notebook").triplets.tobytes() == expected.tobytes()
