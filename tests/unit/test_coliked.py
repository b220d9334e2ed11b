"""Co-liked mining (shared/ml/coliked.py) against a brute-force reference: Python sets, exact fractions, loops."""

from __future__ import annotations

import bisect
from fractions import Fraction
from typing import NamedTuple

import numpy as np
import pytest

from api.schemas import PipelineIn, TripletsIn
from shared.infra.keys import coliked_triplets_artifact, triplets_artifact
from shared.logic.mining import TripletSpec
from shared.logic.pipeline import stage_job
from shared.ml import coliked
from shared.ml.coliked import ALPHA, MAX_TRIES, STRIDE, build_likes, mine_range
from shared.ml.mining import draws


class Ratings(NamedTuple):
    indptr: np.ndarray  # (u + 1,) int64
    movie: np.ndarray  # (r,) int32
    value: np.ndarray  # (r,) float32
    n: int


def random_ratings(seed: int, *, n: int, users: int, per_user: int, zipf: float = 0.0) -> Ratings:
    """Each user rates up to ``per_user`` movies (popularity ~ 1 / rank^zipf), half-star values; the last 5
    movies are never rated; one user rates a movie twice (a like counted once, a rating counted twice)."""
    rng = np.random.default_rng(seed)
    rated = n - 5
    weights = 1.0 / np.arange(1, rated + 1) ** zipf
    weights = weights[rng.permutation(rated)]
    weights /= weights.sum()
    indptr, movies, values = [0], [], []
    for _ in range(users):
        k = int(rng.integers(0, per_user + 1))
        chosen = rng.choice(rated, size=min(k, rated), replace=False, p=weights)
        movies.extend(chosen.tolist())
        values.extend(rng.choice(np.arange(0.5, 5.01, 0.5), size=len(chosen)).tolist())
        indptr.append(len(movies))
    movies.append(movies[0])  # the last user rates the first rating's movie again, liked
    values.append(4.5)
    indptr[-1] = len(movies)
    return Ratings(
        np.array(indptr, dtype=np.int64), np.array(movies, dtype=np.int32), np.array(values, dtype=np.float32), n
    )


def likes_of(r: Ratings, liked_at: float = 4.0) -> coliked.Likes:
    return build_likes(r.indptr, r.movie, r.value, r.n, liked_at=liked_at)


class Reference(NamedTuple):
    positives: list[list[int]]  # per anchor, best first
    co_likes: list[list[int]]
    counts: np.ndarray  # (n,) ratings per movie, any value


def reference(r: Ratings, *, liked_at: float, k: int) -> Reference:
    """Dense co-like counts from sets of likers; positives ranked by the exact cosine (a Fraction), then row."""
    likers: list[set[int]] = [set() for _ in range(r.n)]
    counts = np.zeros(r.n, dtype=np.int64)
    for user in range(len(r.indptr) - 1):
        for p in range(r.indptr[user], r.indptr[user + 1]):
            counts[r.movie[p]] += 1
            if float(r.value[p]) >= liked_at:
                likers[r.movie[p]].add(user)
    positives, co = [], []
    for a in range(r.n):
        scored = []
        for b in range(r.n):
            c = len(likers[a] & likers[b])
            if b != a and c >= 1:
                scored.append((Fraction(c * c, len(likers[a]) * len(likers[b])), b, c))  # cosine squared
        scored.sort(key=lambda sbc: (-sbc[0], sbc[1]))
        positives.append([b for _, b, _ in scored[:k]])
        co.append([c for _, _, c in scored[:k]])
    return Reference(positives, co, counts)


def reference_negative(
    counts: np.ndarray, seed: int, anchor: int, rank: int, excluded: set[int], *, tries: int = MAX_TRIES
) -> int:
    """The negative of rank ``rank``: stream numbers rank * STRIDE + t, inverse CDF by bisection, rejection."""
    rated = [i for i in range(len(counts)) if counts[i] > 0]
    weights = np.array([counts[i] for i in rated], dtype=np.float64) ** ALPHA
    cumulative = list(np.cumsum(weights))
    for t in range(tries):
        u = draws(seed, np.array([anchor]), rank * STRIDE + t)[0]
        candidate = rated[min(bisect.bisect_right(cumulative, u * cumulative[-1]), len(rated) - 1)]
        if candidate not in excluded:
            return candidate
    kept = np.array([0.0 if m in excluded else w for m, w in zip(rated, weights, strict=True)])
    left = list(np.cumsum(kept))
    u = draws(seed, np.array([anchor]), rank * STRIDE + MAX_TRIES)[0]
    index = min(bisect.bisect_right(left, u * left[-1]), int(np.flatnonzero(kept)[-1]))
    return rated[index]


@pytest.fixture(scope="module")
def ratings() -> Ratings:
    return random_ratings(3, n=60, users=40, per_user=12)


@pytest.mark.parametrize(("liked_at", "k"), [(4.0, 5), (3.0, 1), (4.5, 8)])
def test_positives_and_negatives_match_the_brute_force_reference(ratings: Ratings, liked_at: float, k: int) -> None:
    ref = reference(ratings, liked_at=liked_at, k=k)
    result = mine_range(likes_of(ratings, liked_at), 0, ratings.n, seed=11, positives=k, block=7)
    expected = [(a, b) for a in range(ratings.n) for b in ref.positives[a]]
    assert [(int(a), int(b)) for a, b, _ in result.triplets] == expected  # anchor order, then rank
    assert result.co_likes.tolist() == [c for a in range(ratings.n) for c in ref.co_likes[a]]
    assert any(len(p) == 0 for p in ref.positives)  # an anchor without co-likes yields nothing (unrated ones)
    rated = set(np.flatnonzero(ref.counts).tolist())
    for i, (a, b, neg) in enumerate(result.triplets.tolist()):
        excluded = {a, *ref.positives[a]}
        assert neg not in excluded and neg in rated
        rank = ref.positives[a].index(b)
        assert neg == reference_negative(ref.counts, 11, a, rank, excluded), i
    assert result.triplets.dtype == np.int32 and result.triplets.shape[1] == 3


def test_cosines_are_the_cosine(ratings: Ratings) -> None:
    likes = likes_of(ratings)
    result = mine_range(likes, 0, ratings.n, seed=1)
    a, b = result.triplets[:, 0], result.triplets[:, 1]
    cnt = likes.liked_count
    np.testing.assert_allclose(result.cosine, result.co_likes / np.sqrt(cnt[a] * cnt[b]), rtol=1e-6)
    assert (result.cosine > 0).all() and (result.cosine <= 1.0 + 1e-6).all()


def test_ties_go_to_the_lower_row() -> None:
    # One user likes movies 0..5: every pair has the same cosine, so anchor 3's positives are 0, 1, 2, 4, 5.
    r = Ratings(np.array([0, 6]), np.arange(6, dtype=np.int32), np.full(6, 5.0, dtype=np.float32), 6)
    result = mine_range(likes_of(r), 3, 4, seed=0, positives=4)
    assert result.triplets[:, 1].tolist() == [0, 1, 2, 4]


@pytest.mark.parametrize("positives", [1, 5, 50])
def test_any_shard_cut_or_block_size_gives_the_same_bytes(positives: int) -> None:
    r = random_ratings(8, n=400, users=120, per_user=40, zipf=1.0)
    likes = likes_of(r)
    whole = mine_range(likes, 0, r.n, seed=5, positives=positives)
    pieces = [mine_range(likes, lo, hi, seed=5, positives=positives, block=b)
              for (lo, hi), b in zip([(0, 37), (37, 301), (301, 400)], [16, 128, 5], strict=True)]  # fmt: skip
    assert np.concatenate([p.triplets for p in pieces]).tobytes() == whole.triplets.tobytes()
    assert np.concatenate([p.cosine for p in pieces]).tobytes() == whole.cosine.tobytes()
    again = mine_range(likes_of(r), 0, r.n, seed=5, positives=positives, block=1)
    assert again.triplets.tobytes() == whole.triplets.tobytes()
    other_seed = mine_range(likes, 0, r.n, seed=6, positives=positives)
    assert (other_seed.triplets[:, :2] == whole.triplets[:, :2]).all()  # positives do not depend on the seed
    assert (other_seed.triplets[:, 2] != whole.triplets[:, 2]).any()


def expected_negatives(counts: np.ndarray, triplets: np.ndarray, alpha: float) -> np.ndarray:
    """Per movie, how often it is expected as a negative: each triplet draws with probability ~ count^alpha
    among the rated movies other than its anchor and the anchor's positives."""
    weights = np.where(counts > 0, counts.astype(np.float64) ** alpha, 0.0)
    expected = np.zeros(len(counts))
    anchors, starts, sizes = np.unique(triplets[:, 0], return_index=True, return_counts=True)
    for a, start, m in zip(anchors, starts, sizes, strict=True):
        allowed = weights.copy()
        allowed[a] = 0.0
        allowed[triplets[start : start + m, 1]] = 0.0
        expected += m * allowed / allowed.sum()
    return expected


def test_negatives_follow_popularity_to_the_power_alpha() -> None:
    r = random_ratings(4, n=1500, users=800, per_user=60, zipf=1.1)
    result = mine_range(likes_of(r), 0, r.n, seed=9, positives=10)
    counts = np.bincount(r.movie, minlength=r.n)
    seen = np.bincount(result.triplets[:, 2], minlength=r.n)
    assert len(result.triplets) > 10_000
    assert (seen[counts == 0] == 0).all()  # never an unrated movie
    rated = counts > 0
    fit = {}
    for alpha in (0.5, ALPHA, 1.0):
        expected = expected_negatives(counts, result.triplets, alpha)
        fit[alpha] = float(((seen - expected) ** 2 / np.maximum(expected, 1e-12))[rated].sum() / rated.sum())
        if alpha == ALPHA:
            assert np.corrcoef(seen[rated], expected[rated])[0, 1] > 0.97
    assert fit[ALPHA] < 1.5  # chi-square per movie near 1: the counts are what count^0.75 predicts ...
    assert fit[ALPHA] < min(fit[0.5], fit[1.0])  # ... and fit 0.75 better than 0.5 or 1


def test_after_max_tries_the_fallback_keeps_the_law(monkeypatch: pytest.MonkeyPatch, ratings: Ratings) -> None:
    likes = likes_of(ratings)
    monkeypatch.setattr(coliked, "MAX_TRIES", 0)  # every pair takes the fallback draw
    result = mine_range(likes, 0, ratings.n, seed=2)
    ref = reference(ratings, liked_at=4.0, k=5)
    for a, b, neg in result.triplets.tolist():
        excluded = {a, *ref.positives[a]}
        assert neg not in excluded and ref.counts[neg] > 0
        assert neg == reference_negative(ref.counts, 2, a, ref.positives[a].index(b), excluded, tries=0)


def test_an_anchor_with_no_possible_negative_yields_nothing() -> None:
    # Three movies, liked by one user: anchor 0's two positives and itself are every rated movie.
    r = Ratings(np.array([0, 3]), np.arange(3, dtype=np.int32), np.full(3, 4.0, dtype=np.float32), 3)
    assert len(mine_range(likes_of(r), 0, 3, seed=0, positives=2).triplets) == 0
    one = mine_range(likes_of(r), 0, 3, seed=0, positives=1).triplets
    assert one.tolist() == [[0, 1, 2], [1, 0, 2], [2, 0, 1]]


def test_no_likes_no_triplets_and_bad_input_is_refused() -> None:
    r = Ratings(np.array([0, 2, 3]), np.array([0, 1, 1], dtype=np.int32), np.full(3, 2.0, dtype=np.float32), 4)
    assert mine_range(likes_of(r), 0, 4, seed=0).triplets.shape == (0, 3)
    assert mine_range(likes_of(r), 2, 2, seed=0).triplets.shape == (0, 3)
    with pytest.raises(ValueError, match="outside the catalogue"):
        build_likes(r.indptr, r.movie, r.value, 1)
    with pytest.raises(ValueError, match="one CSR"):
        build_likes(r.indptr, r.movie[:2], r.value[:2], 4)
    with pytest.raises(ValueError, match="positives"):
        mine_range(likes_of(r), 0, 4, seed=0, positives=0)
    with pytest.raises(ValueError, match="outside the catalogue"):
        mine_range(likes_of(r), 0, 5, seed=0)


def test_likes_count_a_user_once_and_ratings_every_row(ratings: Ratings) -> None:
    likes = likes_of(ratings)
    first = int(ratings.movie[0])
    assert likes.liked.max() == 1
    assert likes.liked_count.sum() == likes.liked.nnz
    assert likes.rated.tolist() == np.flatnonzero(np.bincount(ratings.movie, minlength=ratings.n)).tolist()
    assert ratings.n - 1 not in likes.rated
    counts = np.bincount(ratings.movie, minlength=ratings.n)
    np.testing.assert_allclose(np.diff(likes.cumulative, prepend=0.0), counts[likes.rated] ** ALPHA)
    assert counts[first] >= 2  # the repeated rating counts twice for popularity


def test_the_exact_selection_agrees_with_the_packed_key_one() -> None:
    r = random_ratings(6, n=200, users=80, per_user=50)
    likes = likes_of(r)
    for lo in range(0, r.n, 64):
        hi = min(lo + 64, r.n)
        c = coliked.co_like_counts(likes, lo, hi)
        row = np.repeat(np.arange(hi - lo), np.diff(c.indptr))
        data = c.data.copy()
        data[c.indices == row + lo] = 0
        score = data.astype(np.float64) ** 2 / likes.liked_count[c.indices]
        exact = coliked._exact_top_k(row, c.indices, data, score, k=7, b=hi - lo)
        packed = coliked._positives(likes, lo, hi, 7)
        assert all(np.array_equal(x, y) for x, y in zip(exact, packed, strict=True))


def test_artifact_names_carry_every_parameter_and_keep_the_descriptor_names() -> None:
    assert TripletSpec(dataset="ds-1", seed=7, strategy="uniform-min").name == "triplets/ds-1/uniform-min-7"
    assert TripletSpec(dataset="ds-1", seed=7).name == triplets_artifact("ds-1", "uniform-min", 7)
    spec = TripletSpec(dataset="ds-1", seed=7, source="ratings")
    assert spec.name == "triplets/ds-1/coliked-p5-l4.0-a0.75-7"
    assert spec.name == coliked_triplets_artifact("ds-1", positives=5, liked_at=4.0, alpha=ALPHA, seed=7)
    names = {
        TripletSpec(dataset="ds-1", seed=s, source="ratings", positives=p, liked_at=at).name
        for s in (7, 8)
        for p in (5, 6)
        for at in (3.5, 4.0, 3.9999)
    }
    assert len(names) == 12
    assert spec.part("j1", 10) == "triplets/ds-1/coliked-p5-l4.0-a0.75-7/part/j1/000000010"
    with pytest.raises(ValueError, match="source"):
        TripletSpec(dataset="ds-1", seed=7, source="clicks")


def test_a_spec_from_job_params() -> None:
    old = TripletSpec.of({"dataset": "d", "seed": 3, "negatives": "notebook", "shard_size": 10})
    assert old == TripletSpec(dataset="d", seed=3, strategy="notebook")
    params = {"dataset": "d", "seed": 3, "negatives": "uniform-min", "source": "ratings", "positives": 9}
    new = TripletSpec.of({**params, "liked_at": 3.5})
    assert (new.source, new.positives, new.liked_at) == ("ratings", 9, 3.5)
    assert new.describe() == {"seed": 3, "source": "ratings", "positives": 9, "liked_at": 3.5}


def test_the_api_and_the_pipeline_carry_the_ratings_parameters() -> None:
    defaults = TripletsIn().load({"dataset": "ds-1"})
    assert (defaults["source"], defaults["positives"], defaults["liked_at"]) == ("descriptors", 5, 4.0)
    asked = {"source": "ratings", "positives": 3, "liked_at": 4.5, "seed": 5}
    options = PipelineIn().load({"dataset": "ds-1", **asked})
    plan = stage_job("mine", options, {})
    assert plan is not None and plan.kind == "triplets"
    assert {k: plan.params[k] for k in asked} == asked
    assert TripletSpec.of(plan.params).name == "triplets/ds-1/coliked-p3-l4.5-a0.75-5"
    plain = stage_job("mine", PipelineIn().load({"dataset": "ds-1"}), {})
    assert plain is not None and "source" not in plain.params and TripletSpec.of(plain.params).source == "descriptors"
    assert TripletSpec.of(plain.params).name == "triplets/ds-1/uniform-min-42"
