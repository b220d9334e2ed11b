"""The query side of shared/ml/recommend.py on a hand-made model: the profile, the example query, the
descriptor counts, exclusions, the genre filter and fewer than k."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace
from typing import cast

import numpy as np
import pytest

from shared.errors import NotFound
from shared.ml.index import IndexParams, MovieIndex, concat_ranges
from shared.ml.pages import decode_cursor
from shared.ml.recommend import (
    Rules,
    ServingModel,
    UserRatings,
    answer,
    check_ids,
    diversified,
    example_query,
    recommend,
    user_query,
)

DESCRIPTORS = [
    ["Drama", "war"],
    ["Comedy"],
    ["Drama", "Comedy", "family"],
    ["Animation", "family"],
    ["war", "Drama"],
    ["Horror"],
]


@pytest.fixture(scope="module")
def model() -> ServingModel:
    rng = np.random.default_rng(0)
    n, d, hidden = len(DESCRIPTORS), 8, 4
    raw = rng.normal(size=(n, d)).astype(np.float32)
    weight, bias = rng.normal(size=(hidden, d)).astype(np.float32), np.zeros(hidden, dtype=np.float32)
    vocabulary = sorted({x for ds in DESCRIPTORS for x in ds})
    indptr = np.cumsum([0] + [len(ds) for ds in DESCRIPTORS]).astype(np.int64)
    indices = np.array([vocabulary.index(x) for ds in DESCRIPTORS for x in ds], dtype=np.int32)
    projected = raw @ weight.T
    projected /= np.linalg.norm(projected, axis=1, keepdims=True)
    return ServingModel(
        version="m-test",
        record={},
        index=MovieIndex.build(projected, IndexParams()),
        weight=weight,
        bias=bias,
        raw=raw,
        embeddings=projected.astype(np.float32),
        movie_ids=np.array([10, 20, 30, 40, 50, 60], dtype=np.int32),
        titles=[f"movie {i} ({1990 + i})" for i in range(n - 1)] + [f"movie {n - 1}"],  # the last has no year
        descriptors=DESCRIPTORS,
        vocabulary=vocabulary,
        desc_indptr=indptr,
        desc_indices=indices,
        user_ids=np.array([7], dtype=np.int32),
        ratings_indptr=np.array([0, 3], dtype=np.int64),
        ratings_movie=np.array([0, 2, 4], dtype=np.int32),  # user 7 rated rows 0, 2 and 4
        ratings_value=np.array([5.0, 2.5, 1.0], dtype=np.float32),
    )


def unit(x: np.ndarray) -> np.ndarray:
    return np.asarray(x / np.linalg.norm(x))


def user_profile(model: ServingModel, user_id: int) -> tuple[np.ndarray, np.ndarray]:
    ratings = model.stored_ratings(user_id)
    return user_query(model, ratings), ratings.rows


def test_the_profile_is_the_rating_weighted_mean_of_raw_vectors_projected(model: ServingModel) -> None:
    query, rated = user_profile(model, 7)
    w = np.array([1.0, 0.5, 0.2])  # ratings / 5
    mean = (w[:, None] * model.raw[[0, 2, 4]]).sum(axis=0) / w.sum()
    np.testing.assert_allclose(query, unit(model.weight @ mean), rtol=1e-5)
    assert rated.tolist() == [0, 2, 4]
    assert len(model.stored_ratings(8)) == 0  # unknown at ingest: no stored ratings


def test_feedback_goes_over_the_stored_ratings_the_last_rating_of_a_movie_winning(model: ServingModel) -> None:
    newer = UserRatings(rows=np.array([2, 5]), values=np.array([5.0, 4.0], dtype=np.float32))
    merged = newer.over(model.stored_ratings(7))
    assert merged.rows.tolist() == [0, 4, 2, 5] and merged.values.tolist() == [5.0, 1.0, 5.0, 4.0]
    assert UserRatings.empty().over(model.stored_ratings(7)).rows.tolist() == [0, 2, 4]

    def no_encoder(texts: list[str]) -> np.ndarray:
        raise AssertionError(texts)

    params = {"k": 6, "exclude_seen": True, "genres": None, "user_id": 7}
    answered = recommend(model, params, encode=no_encoder, feedback=newer)
    assert answered["strategy"] == "profile"
    assert {i["movie_id"] for i in answered["items"]} == {20, 40}  # rows 0, 2, 4 and the new 5 are seen
    expected = user_query(model, merged)
    top = answer(model, expected, k=6, excluded=merged.rows, history=None, described_query={})
    assert [i["movie_id"] for i in answered["items"]] == [i["movie_id"] for i in top["items"]]
    # A user unknown at ingest, created by feedback: a profile of their one rating, that movie's neighbours.
    new_user = recommend(model, {**params, "user_id": 8}, encode=no_encoder, feedback=newer)
    assert new_user["strategy"] == "profile" and len(new_user["items"]) == 4


def test_a_user_with_no_ratings_gets_the_most_rated_movies(model: ServingModel) -> None:
    def no_encoder(texts: list[str]) -> np.ndarray:
        raise AssertionError(texts)

    params = {"k": 2, "exclude_seen": True, "genres": None, "user_id": 8}
    answered = recommend(model, params, encode=no_encoder)
    assert answered["strategy"] == "popular" and answered["query"] == {"user_id": 8}
    # Rows 0, 2 and 4 have one rating each (ties to the lower row); the rest none.
    assert [i["movie_id"] for i in answered["items"]] == [10, 30]
    assert [i["score"] for i in answered["items"]] == [1.0, 1.0]
    family = recommend(model, {**params, "k": 5, "genres": ["family"]}, encode=no_encoder)
    assert [i["movie_id"] for i in family["items"]] == [30, 40]


def test_serve_time_rules_keep_the_best_of_the_movies_they_allow(model: ServingModel) -> None:
    """Years (by the title; a title without one is kept by no range), excluded ids (an unknown one excludes
    nothing) and genres, together: each a mask the search honours, and the answer states them."""

    def no_encoder(texts: list[str]) -> np.ndarray:
        raise AssertionError(texts)

    assert model.years.tolist() == [1990, 1991, 1992, 1993, 1994, 0]
    every = recommend(model, {"k": 6, "exclude_seen": False, "liked": [20]}, encode=no_encoder)
    ranked = [i["movie_id"] for i in every["items"]]  # all but the liked movie, best first
    for rules, kept in (
        ({"year_min": 1992}, {30, 40, 50}),
        ({"year_max": 1991}, {10}),
        ({"year_min": 1991, "year_max": 1993}, {30, 40}),
        ({"year_min": 1995}, set()),
        ({"exclude_ids": [30, 99_999]}, {10, 40, 50, 60}),
        ({"exclude_ids": [40], "genres": ["drama"], "year_min": 1990}, {10, 30, 50}),
    ):
        got = recommend(model, {"k": 6, "exclude_seen": False, "liked": [20], **rules}, encode=no_encoder)
        assert [i["movie_id"] for i in got["items"]] == [m for m in ranked if m in kept], rules
        stated = {("exclude" if name == "exclude_ids" else name): value for name, value in rules.items()}
        assert got["query"] == {"liked": [20], "disliked": [], **stated}
        top = recommend(model, {"k": 1, "exclude_seen": False, "liked": [20], **rules}, encode=no_encoder)
        assert [i["movie_id"] for i in top["items"]] == [m for m in ranked if m in kept][:1]  # the best allowed
    # A user with no ratings: the most rated of the movies allowed.
    popular = recommend(model, {"k": 2, "exclude_seen": True, "user_id": 8, "year_min": 1991}, encode=no_encoder)
    assert [i["movie_id"] for i in popular["items"]] == [30, 50] and popular["strategy"] == "popular"
    seen = recommend(model, {"k": 6, "exclude_seen": True, "user_id": 7, "exclude_ids": [20]}, encode=no_encoder)
    assert {i["movie_id"] for i in seen["items"]} == {40, 60}  # neither rated (10, 30, 50) nor excluded (20)


def test_diversity_chooses_by_maximal_marginal_relevance_from_a_wider_pool() -> None:
    # Rows 0 and 1 are near copies and the most relevant; row 2 is less relevant and unlike them; row 3 is like 0.
    embeddings = np.array([[1, 0, 0], [0.99, 0.14, 0], [0, 1, 0], [0.95, 0, 0.31]], dtype=np.float32)
    model = cast(ServingModel, SimpleNamespace(embeddings=embeddings))
    rows, scores = np.arange(4), np.array([0.9, 0.89, 0.5, 0.4], dtype=np.float32)
    plain = diversified(model, rows, scores, k=2, rules=Rules())
    assert plain[0].tolist() == [0, 1] and plain[1].tolist() == scores[:2].tolist()
    mmr = diversified(model, rows, scores, k=3, rules=Rules(diversity=0.5))
    assert mmr[0].tolist() == [0, 2, 1] and mmr[1].tolist() == scores[[0, 2, 1]].tolist()  # each keeps its score
    # By hand: after row 0, row 1 scores 0.5 x 0.98 - 0.5 x 0.99 < 0; row 2 scores 0.5 x 0.2 - 0 = 0.1.
    assert diversified(model, rows, scores, k=2, rules=Rules(diversity=1.0))[0].tolist() == [0, 2]
    assert Rules().pool(10) == 10 and Rules(diversity=0.3).pool(10) == 50 and Rules(diversity=0.3).pool(20) == 100


def test_a_diverse_answer_reaches_past_the_top_k(model: ServingModel) -> None:
    def no_encoder(texts: list[str]) -> np.ndarray:
        raise AssertionError(texts)

    base = {"k": 2, "exclude_seen": False, "liked": [20]}
    plain = [i["movie_id"] for i in recommend(model, base, encode=no_encoder)["items"]]
    every = [i["movie_id"] for i in recommend(model, {**base, "k": 5}, encode=no_encoder)["items"]]
    diverse = recommend(model, {**base, "diversity": 1.0}, encode=no_encoder)
    ids = [i["movie_id"] for i in diverse["items"]]
    assert ids[0] == plain[0] == every[0] and len(ids) == 2
    assert "maximal marginal relevance" in diverse["explanation"] and diverse["query"]["diversity"] == 1.0
    # With weight 1 the second is the candidate least like the first, from all five, not the second best.
    vectors = model.embeddings / np.linalg.norm(model.embeddings, axis=1, keepdims=True)
    first = int(np.flatnonzero(model.movie_ids == ids[0])[0])
    rows = [int(np.flatnonzero(model.movie_ids == m)[0]) for m in every[1:]]
    assert ids[1] == model.movie_ids[min(rows, key=lambda r: float(vectors[r] @ vectors[first]))]


def test_pages_of_a_session_never_answer_a_movie_twice(model: ServingModel) -> None:
    def no_encoder(texts: list[str]) -> np.ndarray:
        raise AssertionError(texts)

    base, shown, pages = {"k": 2, "exclude_seen": False, "liked": [20]}, [], []
    while True:
        page = recommend(model, {**base, "shown": shown}, encode=no_encoder)
        pages.append([i["movie_id"] for i in page["items"]])
        assert page["query"] == {"liked": [20], "disliked": []}  # the cursor's ids are no rule of the query's
        shown = decode_cursor(page["next_cursor"])
        if not page["items"]:
            break
    every = [i["movie_id"] for i in recommend(model, {**base, "k": 6}, encode=no_encoder)["items"]]
    assert pages == [every[0:2], every[2:4], every[4:5], []]  # the ranking, two at a time, then nothing
    assert "next_cursor" not in recommend(model, base, encode=no_encoder)  # no page asked for: no cursor


def test_the_example_query_moves_from_disliked_towards_liked(model: ServingModel) -> None:
    p = model.project(model.raw)
    liked, disliked = np.array([1, 3]), np.array([5])
    pos, neg = p[[1, 3]].mean(axis=0), p[5]
    np.testing.assert_allclose(example_query(model, liked, disliked), pos + (pos - neg), rtol=1e-5)
    np.testing.assert_allclose(example_query(model, liked, disliked[:0]), pos, rtol=1e-5)
    np.testing.assert_allclose(example_query(model, liked[:0], disliked), -neg, rtol=1e-5)


@pytest.mark.parametrize("rows", [[0, 2, 4], [3, 2, 1], [5], [0, 4, 1, 2, 3, 5], []])
def test_top_descriptors_count_as_counter_most_common_ties_in_first_seen_order(
    model: ServingModel, rows: list[int]
) -> None:
    expected = [[d, n] for d, n in Counter(d for r in rows for d in DESCRIPTORS[r]).most_common(10)]
    assert model.top_descriptors(np.array(rows, dtype=np.int64)) == expected


def test_answers_exclude_filter_and_return_fewer_than_k_when_that_is_all(model: ServingModel) -> None:
    query, rated = user_profile(model, 7)
    result = answer(model, query, k=10, excluded=rated, history=rated, described_query={"user_id": 7})
    assert sorted(item["movie_id"] for item in result["items"]) == [20, 40, 60]  # all but the rated, not 10
    scores = [item["score"] for item in result["items"]]
    assert scores == sorted(scores, reverse=True)
    assert result["history_top_descriptors"][0] == ["Drama", 3]

    drama = answer(model, query, k=2, excluded=rated[:0], rules=Rules(genres=("drama",)), history=None,
                   described_query={})  # fmt: skip
    assert {item["movie_id"] for item in drama["items"]} <= {10, 30, 50} and len(drama["items"]) == 2
    assert drama["history_top_descriptors"] == []

    nothing = answer(model, query, k=5, excluded=np.arange(6), history=None, described_query={})
    assert nothing["items"] == [] and nothing["top_descriptors"] == []


def test_concat_ranges_is_the_loop_it_replaces() -> None:
    starts, sizes = np.array([5, 0, 9, 3]), np.array([2, 0, 3, 1])
    loop = np.concatenate([np.arange(s, s + n) for s, n in zip(starts, sizes, strict=True)])
    assert concat_ranges(starts, sizes).tolist() == loop.tolist() == [5, 6, 9, 10, 11, 3]
    assert concat_ranges(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)).tolist() == []


def test_ids_are_checked_once_the_same_way_for_the_api_and_the_model(model: ServingModel) -> None:
    check_ids({7}, {10, 20}, user_id=7, movie_ids=[10, 20])  # all known: no error
    with pytest.raises(NotFound, match="unknown user id 8"):
        check_ids({7}, {10, 20}, user_id=8, movie_ids=[])
    with pytest.raises(NotFound, match=r"unknown movie id\(s\) \[11, 12\]"):
        check_ids({7}, {10, 20}, user_id=None, movie_ids=[10, 11, 12])
    with pytest.raises(NotFound, match=r"unknown movie id\(s\) \[11\]"):
        model.rows_of([10, 11])
    assert model.rows_of([60, 10]).tolist() == [5, 0]


def test_recommend_dispatches_each_kind_of_query(model: ServingModel) -> None:
    def no_encoder(texts: list[str]) -> np.ndarray:
        raise AssertionError(f"only keyword queries encode, got {texts}")

    base = {"k": 3, "exclude_seen": True, "genres": None}
    by_user = recommend(model, {**base, "user_id": 7}, encode=no_encoder)
    assert by_user["query"] == {"user_id": 7}
    assert {i["movie_id"] for i in by_user["items"]}.isdisjoint({10, 30, 50})  # what user 7 rated
    assert by_user["history_top_descriptors"][0] == ["Drama", 3]
    assert by_user["strategy"] == "profile"

    by_example = recommend(model, {**base, "liked": [20], "disliked": [60]}, encode=no_encoder)
    assert by_example["query"] == {"liked": [20], "disliked": [60]}
    assert {i["movie_id"] for i in by_example["items"]}.isdisjoint({20, 60})
    assert by_example["strategy"] == "examples"

    encoded: list[list[str]] = []

    def encode(texts: list[str]) -> np.ndarray:
        encoded.append(texts)
        return model.raw[[3, 3]]  # both keywords land on row 3's raw vector

    by_keywords = recommend(model, {**base, "keywords": ["kids", "toons"]}, encode=encode)
    assert encoded == [["kids", "toons"]]
    assert by_keywords["items"][0]["movie_id"] == 40 and by_keywords["history_top_descriptors"] == []
    assert by_keywords["strategy"] == "keywords" and "most rated first" in by_keywords["explanation"]
    assert all("shared_descriptors" not in i for i in by_keywords["items"])


def test_similar_excludes_the_movie_and_names_shared_descriptors(model: ServingModel) -> None:
    def no_encoder(texts: list[str]) -> np.ndarray:
        raise AssertionError(f"similar queries do not encode, got {texts}")

    result = recommend(model, {"k": 10, "exclude_seen": True, "similar_to": 30}, encode=no_encoder)
    assert result["strategy"] == "similar" and result["query"] == {"similar_to": 30}
    assert sorted(i["movie_id"] for i in result["items"]) == [10, 20, 40, 50, 60]  # all but the movie itself
    scores = [i["score"] for i in result["items"]]
    assert scores == sorted(scores, reverse=True)
    expected = np.sort(model.embeddings @ model.embeddings[2])[::-1][1:]  # exact cosine, row 2 left out
    np.testing.assert_allclose(scores, expected, atol=1e-4)
    shared = {i["movie_id"]: i["shared_descriptors"] for i in result["items"]}
    # Movie 30 is Drama, Comedy, family: compared case-insensitively, in the item's own order.
    assert shared == {10: ["Drama"], 20: ["Comedy"], 40: ["family"], 50: ["Drama"], 60: []}
    assert len(recommend(model, {"k": 2, "similar_to": 30}, encode=no_encoder)["items"]) == 2
    with pytest.raises(NotFound, match=r"unknown movie id\(s\) \[31\]"):
        recommend(model, {"k": 2, "similar_to": 31}, encode=no_encoder)
