"""``/v1/movies``: find movies of the active model's catalogue by title (answered here, in pure Python) and
the movies like one of them (a recommend job: the index lives in the workers)."""

from __future__ import annotations

from typing import Any

from apiflask import APIBlueprint

from shared.ml.titles import year_of

from .context import active_model, services
from .recommendations import answer_within
from .schemas import JobOut, MovieSearchOut, MovieSearchQuery, RecommendationsOut, SimilarQuery

bp = APIBlueprint("movies", __name__, url_prefix="/v1/movies", tag="movies")

_SIMILAR_RESPONSES: dict[int | str, dict[str, str | dict[str, dict[str, Any]]]] = {
    200: {
        "description": "the neighbours, ready within ?wait; each item names the descriptors it shares",
        "content": {"application/json": {"schema": RecommendationsOut}},
    },
    400: {"description": "invalid request"},
    404: {"description": "unknown movie id"},
    409: {"description": "no model is active"},
}


@bp.get("")
@bp.input(MovieSearchQuery, location="query", arg_name="query", unknown=None)
@bp.output(MovieSearchOut)
@bp.doc(responses={400: "empty, too long or no letter or digit in q; limit outside 1..100", 409: "no model is active"})
def search_movies(query: dict[str, Any]) -> dict[str, Any]:
    """Movies whose title matches ``q``: case-, accent- and punctuation-insensitive, the last word as a prefix,
    a year narrowing it ("toy story 1995"); an exact title first."""
    version, dataset = active_model()
    catalogue = services().catalogue.movies(dataset)
    rows = services().catalogue.title_index(dataset).search(query["q"], query["limit"])
    return {
        "model": version,
        "query": query["q"],
        "movies": [{**catalogue[r], "year": year_of(catalogue[r]["title"])} for r in rows],
    }


@bp.get("/<int:movie_id>/similar")
@bp.input(SimilarQuery, location="query", arg_name="query", unknown=None)
@bp.output(JobOut, status_code=202, description="the recommendation job, when not ready within ?wait")
@bp.doc(responses=_SIMILAR_RESPONSES)
def similar_movies(movie_id: int, query: dict[str, Any]) -> Any:
    """The k movies nearest to one in the active model's index, the movie itself left out."""
    version, dataset = active_model()
    services().catalogue.check_ids(dataset, movie_ids=[movie_id])
    rules = {name: value for name, value in query.items() if name != "wait"}  # k and the serve-time rules
    return answer_within(params={**rules, "similar_to": movie_id, "model": version}, wait_s=query["wait"])
