"""The hnswlib wrapper: recall against exact search, bytes round trip with checksum, filters and fewer-than-k."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shared.ml.encoder import load_encoder, mean_by_rows
from shared.ml.fitting import TrainConfig
from shared.ml.index import ChecksumMismatch, IndexParams, MovieIndex, RowSets
from shared.ml.mining import build_incidence, mine_range
from shared.ml.movielens import read_catalogue
from shared.ml.training import train
from tests.helpers import SMALL


@pytest.fixture(scope="module")
def projected() -> np.ndarray:
    """ml-latest-small's projected embeddings from a briefly trained model."""
    catalogue = read_catalogue(SMALL, tags_per_movie=5)
    inc = build_incidence(catalogue.desc_indptr, catalogue.desc_indices, catalogue.vocabulary)
    triplets = mine_range(inc, 0, inc.n, seed=42, strategy="uniform-min").triplets
    encoder = load_encoder("all-MiniLM-L6-v2", "cls", torch.device("cpu"))
    vectors = mean_by_rows(catalogue.desc_indptr, catalogue.desc_indices, encoder.encode_uncached(catalogue.vocabulary))
    return train(vectors, triplets, TrainConfig(epochs=1), device=torch.device("cpu")).projected


def cosine(embeddings: np.ndarray, query: np.ndarray) -> np.ndarray:
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    return np.asarray(unit @ (query / np.linalg.norm(query)))


def exact(embeddings: np.ndarray, query: np.ndarray, k: int, allowed: np.ndarray | None = None) -> np.ndarray:
    scores = cosine(embeddings, query)
    if allowed is not None:
        scores = np.where(allowed, scores, -np.inf)
    return np.argsort(-scores, kind="stable")[:k]


def hits(embeddings: np.ndarray, query: np.ndarray, rows: np.ndarray, k: int, allowed: np.ndarray | None = None) -> int:
    """Returned rows that belong in an exact top k. Movies with the same descriptors have the same vector,
    so the exact top k is a set only up to ties: a row counts if it scores at least the k-th exact score."""
    scores = cosine(embeddings, query)
    kth = scores[exact(embeddings, query, k, allowed)[-1]]
    return int((scores[rows] >= kth - 1e-5).sum())


def test_recall_at_10_against_exact_search(projected: np.ndarray) -> None:
    index = MovieIndex.build(projected, IndexParams())
    queries = projected[np.random.default_rng(0).choice(len(projected), 500, replace=False)]
    found = sum(hits(projected, q, index.query(q, 10)[0], 10) for q in queries)
    assert found / (10 * len(queries)) >= 0.99


def test_bytes_round_trip_is_checked(projected: np.ndarray) -> None:
    index = MovieIndex.build(projected[:2000], IndexParams(m=8, ef_construction=100, ef=50))
    data, sha = index.to_bytes()
    loaded = MovieIndex.from_bytes(data, sha256=sha, group=index.group, dim=projected.shape[1], params=index.params)
    q = projected[7]
    assert loaded.query(q, 5)[0].tolist() == index.query(q, 5)[0].tolist()
    broken = bytearray(data)
    broken[100] ^= 0xFF
    with pytest.raises(ChecksumMismatch):
        MovieIndex.from_bytes(bytes(broken), sha256=sha, group=index.group, dim=projected.shape[1], params=index.params)


def test_filters_and_fewer_than_k(projected: np.ndarray) -> None:
    index = MovieIndex.build(projected, IndexParams())
    q = projected[0]
    allowed = np.zeros(len(projected), dtype=bool)
    allowed[[5, 50, 500, 5000]] = True  # far fewer reachable rows than k: answer with what there is
    rows, scores = index.query(q, 10, allowed=allowed)
    assert sorted(rows.tolist()) == [5, 50, 500, 5000]
    assert list(scores) == sorted(scores, reverse=True)
    mask = np.ones(len(projected), dtype=bool)
    mask[exact(projected, q, 30)] = False  # exclude the 30 nearest: the graph search must widen
    rows, _ = index.query(q, 10, allowed=mask)
    assert len(rows) == 10 and mask[rows].all()
    assert hits(projected, q, rows, 10, mask) == 10
    assert len(index.query(q, 10, allowed=np.zeros(len(projected), dtype=bool))[0]) == 0


class Refusing:
    """An hnswlib index that refuses every search of more than one query, as it does when one query of a call
    cannot reach k vectors: ``query_many`` must then answer each of that call's queries by ``query``."""

    def __init__(self, index: object) -> None:
        self._index = index

    def __getattr__(self, name: str) -> object:
        return getattr(self._index, name)

    def knn_query(self, data: np.ndarray, **kw: object) -> object:
        if len(data) > 1:
            raise RuntimeError("Cannot return the results in a contiguous 2D array")
        return self._index.knn_query(data, **kw)  # type: ignore[attr-defined]


@pytest.mark.parametrize("threads", [1, 2])
def test_many_queries_answer_as_one_query_each(projected: np.ndarray, threads: int) -> None:
    """Rows and scores bit for bit ``query``'s, exclusions of every size: none, a few (one beam, many queries,
    searched in threads), hundreds (a beam each), all but 3 (hnswlib's beam the whole graph), all."""
    index = MovieIndex.build(projected, IndexParams())
    rng = np.random.default_rng(3)
    n = len(projected)
    sizes = [0] * 40 + [int(s) for s in rng.integers(1, 80, 100)] + [300, 301, 2000, n - 3, n - 3, n]
    excluded = [rng.choice(n, size=s, replace=False) for s in sizes]
    excluded[5] = np.array([7, 7, 8])  # a movie twice: excluded once
    vectors = projected[rng.choice(n, len(sizes))] + rng.normal(scale=0.1, size=(len(sizes), projected.shape[1]))
    sets = RowSets(np.r_[0, np.cumsum([len(e) for e in excluded])], np.concatenate(excluded).astype(np.int64))
    for k in (1, 10, 40):
        found = index.query_many(vectors, k, excluded=sets, threads=threads)
        for i, rows in enumerate(excluded):
            allowed = np.ones(n, dtype=bool)
            allowed[rows] = False
            one_rows, one_scores = index.query(vectors[i], k, allowed=allowed)
            lo, hi = found.indptr[i], found.indptr[i + 1]
            assert found.rows[lo:hi].tolist() == one_rows.tolist()
            assert found.scores[lo:hi].tobytes() == one_scores.tobytes()
    assert np.diff(found.indptr)[-1] == 0 and np.diff(found.indptr)[-2] == 3


def test_many_queries_that_hnswlib_refuses_are_answered_one_by_one(projected: np.ndarray) -> None:
    index = MovieIndex.build(projected, IndexParams())
    vectors = projected[[0, 10, 20, 30]]
    sets = RowSets(np.array([0, 0, 1, 1, 3]), np.array([10, 30, 31]))
    expected = index.query_many(vectors, 10, excluded=sets)
    index._index = Refusing(index._index)
    found = index.query_many(vectors, 10, excluded=sets)
    assert [a.tolist() for a in found] == [a.tolist() for a in expected] and len(found.rows) == 40


def test_tied_movies_come_in_tie_order_in_every_path() -> None:
    """Rows 0, 2, 4 and 5 share a vector (the same descriptors): with ties (ratings) 1, 9, 9, 3 they come 2, 4,
    5, 0 (most first, then the lower row), whether found by the graph, by ``query_many`` or by the exact scan."""
    rng = np.random.default_rng(5)
    vectors = rng.normal(size=(40, 8)).astype(np.float32)
    vectors[[2, 4, 5]] = vectors[0]
    ties = np.zeros(40)
    ties[[0, 2, 4, 5]] = [1, 9, 9, 3]
    plain = MovieIndex.build(vectors, IndexParams())
    index = plain.with_ties(ties)
    assert plain.query(vectors[0], 4)[0].tolist() == [0, 2, 4, 5]  # without ties: catalogue order
    rows, scores = index.query(vectors[0], 4)
    assert rows.tolist() == [2, 4, 5, 0] and len(set(scores.tolist())) == 1
    found = index.query_many(vectors[[0]], 4, excluded=RowSets(np.array([0, 1]), np.array([4])))
    assert found.rows.tolist() == [2, 5, 0, int(found.rows[3])] and found.rows[3] not in (0, 2, 4, 5)
    allowed = np.ones(40, dtype=bool)
    allowed[4] = False
    assert index.scan(vectors[0], 3, allowed)[0].tolist() == [2, 5, 0]


class NoReadOut(Refusing):
    """An hnswlib index whose vectors can no longer be read out (``get_items``): a scan must use its copy."""

    def get_items(self, *_: object, **__: object) -> object:
        raise AssertionError("the vectors were read out of hnswlib again")


def test_a_query_leaving_out_much_of_the_graph_is_an_exact_scan_read_out_once(projected: np.ndarray) -> None:
    """Half the movies left out: a beam past ``EXACT_SHARE`` of the graph, so the exact scan answers, the exact
    ranking (cosine, equal scores by row); its vectors read out of hnswlib once, and a scan of every movie too."""
    index = MovieIndex.build(projected, IndexParams())
    rng = np.random.default_rng(11)
    n = len(projected)
    allowed = np.ones(n, dtype=bool)
    allowed[rng.choice(n, size=n // 2, replace=False)] = False
    query = projected[1] + np.asarray(rng.normal(scale=0.1, size=projected.shape[1]), dtype=np.float32)
    sims = cosine(projected, query)
    for k in (1, 10, 40):
        rows, scores = index.query(query, k, allowed=allowed)
        expected = [r for r in np.lexsort((np.arange(n), -sims)).tolist() if allowed[r]][:k]
        assert rows.tolist() == expected
        np.testing.assert_allclose(scores, sims[rows], atol=1e-5)
    index._index = NoReadOut(index._index)
    again, _ = index.query(query, 10, allowed=allowed)
    assert again.tolist() == index.query(query, 10, allowed=allowed)[0].tolist()
    everything, _ = index.scan(query, 5, None)
    assert everything.tolist() == np.lexsort((np.arange(n), -sims))[:5].tolist()
