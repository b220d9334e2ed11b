"""Request and response schemas: what the API validates and what its OpenAPI spec documents.

Every request body is a ``BodySchema`` (api/openapi.py): closed to unknown fields, JSON's own types, and its rules
across fields stated once, enforced here and written into /openapi.json.
"""

from __future__ import annotations

from typing import Any

from apiflask import Schema
from apiflask.fields import Boolean, Dict, Float, Integer, List, Nested, Raw, String
from apiflask.validators import Length, OneOf, Range, Regexp
from marshmallow import RAISE, ValidationError, validates, validates_schema

from shared.infra.settings import DEFAULT_TAGS_PER_MOVIE
from shared.jobs.store import MAX_LIST_LIMIT, STATUSES
from shared.logic.batch import DEFAULT_SHARD_USERS, MAX_LISTED_USERS, MAX_SHARD_USERS, MIN_SHARD_USERS
from shared.logic.ingest import MAX_TAGS_PER_MOVIE
from shared.logic.mining import DEFAULT_SEED, DEFAULT_SHARD_SIZE, MAX_SHARD_SIZE, MIN_SHARD_SIZE, SOURCES
from shared.logic.online import DEFAULT_BUCKET_S, DEFAULT_K, EVENT_TYPES, KINDS, PAUSE_EVERY
from shared.ml import protocol
from shared.ml.attribution import MAX_ID_CHARS
from shared.ml.coliked import DEFAULT_LIKED_AT, DEFAULT_POSITIVES, MAX_LIKED_AT, MAX_POSITIVES, MIN_LIKED_AT
from shared.ml.encoder import POOLINGS
from shared.ml.fitting import ARCHITECTURES, LIMITS, PROFILES
from shared.ml.mining import STRATEGIES
from shared.ml.pages import decode_cursor
from shared.ml.recipes import AUTO, DEFAULT_RECIPE, RECIPES
from shared.ml.titles import MAX_QUERY_CHARS, query_tokens
from shared.store.feedback import MAX_BATCH as MAX_FEEDBACK_BATCH

from .context import cooperate
from .openapi import BodySchema, ExactlyOne, NotAllEmpty, PlainList

MAX_PATH_CHARS = 4096
_SEGMENT = r"(?:[^/\x00.][^/\x00]*|\.[^/\x00.][^/\x00]*|\.\.[^/\x00]+|\.)"
"""A path segment other than "..": a name (dots allowed, "..." too) or "."."""
RELATIVE_PATH = rf"^{_SEGMENT}(?:/{_SEGMENT}?)*$"
"""What /openapi.json promises a path field takes: relative, never climbing with "..", no NUL. The server's own
test is ``confine`` (inside the data root, symlinks resolved), which also takes an absolute path inside the root;
a string of this pattern always passes it, so a client that follows the spec is not refused for its path."""


class ErrorBody(Schema):
    code = String(required=True, metadata={"description": "stable machine-readable code"})
    message = String(required=True)
    details = Dict(metadata={"description": "what was wrong, where it applies"})


class ErrorOut(Schema):
    error = Nested(ErrorBody, required=True)


class DatasetIn(BodySchema):
    path = String(
        required=True,
        validate=Length(1, MAX_PATH_CHARS),
        metadata={"description": "inside the data root", "pattern": RELATIVE_PATH},
    )
    tags_per_movie = Integer(load_default=DEFAULT_TAGS_PER_MOVIE, validate=Range(1, MAX_TAGS_PER_MOVIE))
    genres_fix_csv = String(
        load_default=None, allow_none=True, validate=Length(1, MAX_PATH_CHARS), metadata={"pattern": RELATIVE_PATH}
    )


class DatasetUploadFields(Schema):
    """The form fields of a multipart ``POST /v1/datasets`` beside its files (api/uploads.py documents both)."""

    tags_per_movie = Integer(load_default=DEFAULT_TAGS_PER_MOVIE, validate=Range(1, MAX_TAGS_PER_MOVIE))


class TripletsIn(BodySchema):
    dataset = String(required=True, validate=Length(1, 64))
    shard_size = Integer(load_default=DEFAULT_SHARD_SIZE, validate=Range(MIN_SHARD_SIZE, MAX_SHARD_SIZE))
    seed = Integer(load_default=DEFAULT_SEED, validate=Range(0, 2**32 - 1))
    negatives = String(
        load_default="uniform-min",
        validate=OneOf(STRATEGIES),
        metadata={"description": "uniform-min, notebook or semi-hard (source descriptors)"},
    )
    source = String(
        load_default="descriptors",
        validate=OneOf(SOURCES),
        metadata={
            "description": "descriptors (shared descriptors), ratings (co-liked movies, popular negatives) or both"
        },
    )
    positives = Integer(
        load_default=DEFAULT_POSITIVES,
        validate=Range(1, MAX_POSITIVES),
        metadata={"description": "source ratings: the most co-liked movies taken per anchor, one triplet each"},
    )
    liked_at = Float(
        load_default=DEFAULT_LIKED_AT,
        validate=Range(MIN_LIKED_AT, MAX_LIKED_AT),
        metadata={"description": "source ratings: a rating at least this is a like"},
    )


MAX_TEXTS = 5_000
"""Strings (or items) one encode request may carry."""
MAX_TEXT_CHARS = 1_000
MAX_ITEM_STRINGS = 100
MAX_MODEL_CHARS = 256


class EncodeIn(BodySchema):
    rules = (ExactlyOne("dataset", "texts", "items"),)

    dataset = String(validate=Length(1, 64), metadata={"description": "encode a dataset's movies"})
    texts = List(
        String(validate=Length(1, MAX_TEXT_CHARS)),
        validate=Length(1, MAX_TEXTS),
        metadata={"description": f"strings to encode, at most {MAX_TEXTS}, each at most {MAX_TEXT_CHARS} chars"},
    )
    items = List(
        List(String(validate=Length(1, MAX_TEXT_CHARS)), validate=Length(1, MAX_ITEM_STRINGS)),
        validate=Length(1, MAX_TEXTS),
        metadata={"description": "lists of strings; an item's vector is the mean of its strings' vectors"},
    )
    model = String(
        validate=Length(1, MAX_MODEL_CHARS),
        metadata={"description": "Hugging Face name or path", "pattern": RELATIVE_PATH},
    )
    pooling = String(validate=OneOf(POOLINGS))


class MoviesQuery(Schema):
    class Meta:
        unknown = RAISE

    offset = Integer(load_default=0, validate=Range(0, 10_000_000))
    limit = Integer(load_default=100, validate=Range(1, 1000))


class MovieOut(Schema):
    movie_id = Integer()
    title = String()
    descriptors = List(String())


class MoviesOut(Schema):
    dataset = String()
    total = Integer()
    offset = Integer()
    limit = Integer()
    movies = List(Nested(MovieOut))


def _knob(name: str, *, real: bool = False) -> Integer | Float:
    low, high = LIMITS[name]
    desc = {"description": f"{'(' if real else '['}{low}, {high}]"}
    if real:
        return Float(validate=Range(low, high, min_inclusive=False), metadata=desc)
    return Integer(validate=Range(int(low), int(high)), metadata=desc)


DESCRIBED_KNOBS = {
    "prior": "weight of the popularity prior for a user with no rating (light users); 0: off",
    "prior_until": "ratings at which the popularity prior has shrunk to nothing",
    "cold_boost": "a movie nobody rated gets this share of the query's length x a movie vector's added to its "
    "score; 0: off",
    "regularization": "ials: the factorisation's L2 weight (default 1)",
    "alpha": "ials: a rated pair's confidence is 1 + alpha (default 1)",
    "layers": "linear: 1 (the notebook) to 4 layers; sequence: its self-attention blocks",
    "dropout": "after each inner layer (sequence: each block's sublayers), training only",
}
"""What the train and pipeline bodies say of the options they both take beside the numeric knobs."""


def _described(name: str, *, above_low: bool = False) -> Integer | Float:
    """An option within its ``LIMITS`` (above the lower one when ``above_low``), described once: an integer one
    where both limits are integers, else a float one."""
    low, high = LIMITS[name]
    meta = {"description": DESCRIBED_KNOBS[name]}
    if isinstance(low, int) and isinstance(high, int):
        return Integer(validate=Range(low, high, min_inclusive=not above_low), metadata=meta)
    return Float(validate=Range(low, high, min_inclusive=not above_low), metadata=meta)


class TrainIn(BodySchema):
    dataset = String(required=True, validate=Length(1, 64))
    triplets = String(
        validate=Length(1, 256), metadata={"description": "triplet artifact; default uniform-min, seed 42"}
    )
    epochs = _knob("epochs")
    hidden_dim = _knob("hidden_dim")
    margin = _knob("margin", real=True)
    lr = _knob("lr", real=True)
    batch_size = _knob("batch_size")
    seed = Integer(validate=Range(0, 2**32 - 1))
    model = String(
        validate=Length(1, MAX_MODEL_CHARS),
        metadata={"description": "encoder; default from settings", "pattern": RELATIVE_PATH},
    )
    pooling = String(validate=OneOf(POOLINGS))
    architecture = String(
        validate=OneOf(ARCHITECTURES), metadata={"description": "linear (default), hybrid, ials or sequence"}
    )
    liked_at = Float(validate=Range(0.5, 5.0), metadata={"description": "hybrid: a rating at least this is a like"})
    profile = String(validate=OneOf(PROFILES), metadata={"description": "user profile: rating (default), centred"})
    recency_days = _knob("recency_days", real=False)
    prior = _described("prior")
    prior_until = _described("prior_until")
    cold_boost = _described("cold_boost")
    regularization = _described("regularization", above_low=True)
    alpha = _described("alpha")
    layers = _described("layers")
    dropout = _described("dropout")


class IndexIn(BodySchema):
    version = String(required=True, validate=Length(1, 64))
    m = Integer(validate=Range(2, 256), metadata={"description": "hnswlib M (graph degree), default 16"})
    ef_construction = Integer(validate=Range(10, 4096), metadata={"description": "build beam, default 200"})
    ef = Integer(validate=Range(10, 4096), metadata={"description": "query beam, default 100"})


class ActivateOut(Schema):
    active = String()
    previous = String(allow_none=True)


MAX_K = 100
MAX_KEYWORDS = 20
MAX_EXAMPLES = 100
MAX_EXCLUDED = 1000
MAX_CURSOR_CHARS = 65_536
MAX_YEAR = 9999


class Cursor(String):
    """A ``next_cursor`` sent back (shared/ml/pages.py): loaded as the movie ids it carries."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        text = super()._deserialize(value, attr, data, **kwargs)
        if not 1 <= len(text) <= MAX_CURSOR_CHARS:
            raise ValidationError(f"a cursor is 1 to {MAX_CURSOR_CHARS} characters")
        try:
            return decode_cursor(text)
        except ValueError as exc:
            raise ValidationError(str(exc)) from None


class ServeRules(Schema):
    """The serve-time rules every answer may carry (shared/ml/recommend.py ``Rules``): in a recommendation's body
    and a similar-movie query's string alike."""

    genres = List(String(validate=Length(1, 64)), validate=Length(1, 20))
    year_min = Integer(validate=Range(1, MAX_YEAR), metadata={"description": "only movies of this year or later"})
    year_max = Integer(
        validate=Range(1, MAX_YEAR),
        metadata={"description": "only movies of this year or earlier (a movie's year: its title's; none, no range)"},
    )
    diversity = Float(
        validate=Range(0, 1),
        allow_nan=False,
        metadata={
            "description": "0 (relevance alone, the default) to 1: the answer chosen by maximal marginal relevance "
            "from a pool of 5 k (at least 50) candidates, each trading relevance against its likeness to those chosen"
        },
    )
    exclude_ids = List(  # "exclude" in the body; the attribute would hide marshmallow's own Schema.exclude
        Integer(validate=Range(1, 2**31 - 1)),
        data_key="exclude",
        validate=Length(0, MAX_EXCLUDED),
        metadata={"description": "movie ids the answer must not hold (an id the catalogue does not hold is ignored)"},
    )


class RecommendIn(ServeRules, BodySchema):
    rules = (ExactlyOne("user_id", "keywords", ("liked", "disliked")),)

    user_id = Integer(validate=Range(1, 2**31 - 1))
    keywords = List(String(validate=Length(1, 100)), validate=Length(1, MAX_KEYWORDS))
    liked = List(Integer(validate=Range(1, 2**31 - 1)), validate=Length(0, MAX_EXAMPLES))
    disliked = List(Integer(validate=Range(1, 2**31 - 1)), validate=Length(0, MAX_EXAMPLES))
    k = Integer(load_default=10, validate=Range(1, MAX_K))
    exclude_seen = Boolean(load_default=True)
    shown = Cursor(  # "cursor" in the body: the ids it carries
        data_key="cursor",
        metadata={
            "minLength": 1,
            "maxLength": MAX_CURSOR_CHARS,
            "description": "the next_cursor of this query's previous page: the next page holds none of the movies "
            "answered so far in the session (at most 5,000 of them); any other string is refused 400",
            "pattern": r"^p1\.[A-Za-z0-9_-]+$",
        },
    )


class BatchUsers(Raw):
    """``"all"`` or a list of user ids (positive 32-bit integers, 1 to MAX_LISTED_USERS of them)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if value == "all":
            return value
        if not isinstance(value, list) or not 1 <= len(value) <= MAX_LISTED_USERS:
            raise ValidationError(f'give "all" or a list of 1 to {MAX_LISTED_USERS:,} user ids')
        ids = [_user_id(v) for v in value]
        bad = [v for v, i in zip(value, ids, strict=True) if i is None]
        if bad:
            raise ValidationError(f"user ids are integers from 1 to 2^31 - 1; not {bad[:5]}")
        return ids


def _user_id(value: Any) -> int | None:
    """A user id, or None: a JSON number without a fraction is an integer (3.0 too, as JSON Schema and
    marshmallow's Integer take it); a boolean is not."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 2**31 - 1:
        return None
    return value


class RecommendBatchIn(ServeRules, BodySchema):
    users = BatchUsers(
        required=True,
        metadata={
            "description": '"all" (the active model\'s dataset\'s users and those who gave feedback since) or a list '
            "of user ids (duplicates dropped; an id unknown to the dataset gets the popular fallback)",
            "oneOf": [
                {"type": "string", "enum": ["all"]},
                {"type": "array", "minItems": 1, "maxItems": MAX_LISTED_USERS,
                 "items": {"type": "integer", "minimum": 1, "maximum": 2**31 - 1}},
            ],
        },
    )  # fmt: skip
    k = Integer(load_default=10, validate=Range(1, MAX_K))
    exclude_seen = Boolean(load_default=True)
    shard_users = Integer(
        load_default=DEFAULT_SHARD_USERS,
        validate=Range(MIN_SHARD_USERS, MAX_SHARD_USERS),
        metadata={"description": "users per shard (a task on the cpu queue)"},
    )


class RecommendedMovie(Schema):
    movie_id = Integer()
    title = String()
    descriptors = List(String())
    score = Float(metadata={"description": "cosine similarity to the query"})
    shared_descriptors = List(
        String(),
        metadata={"description": "similar-movie queries: the descriptors this item shares with the movie"},
    )


class RecommendationsOut(Schema):
    model = String(metadata={"description": "the model version that answered"})
    query = Dict(metadata={"description": "the query as understood"})
    strategy = String(
        metadata={
            "description": "what produced the answer: profile (a user's ratings), light-profile (a user with "
            "fewer ratings than the model's prior_until: the profile blended with a popularity prior), popular (a "
            "user with none: the most-rated movies), keywords, examples (liked/disliked) or similar (a movie's "
            "neighbours)"
        }
    )
    explanation = String(metadata={"description": "how the items were ranked, where it is more than cosine"})
    next_cursor = String(
        allow_none=True,
        metadata={
            "description": "POST /v1/recommendations: send it back as `cursor` with the same query for the next "
            "page, which holds none of the movies answered so far; null once the session has been answered 5,000"
        },
    )
    recommendation_id = String(
        metadata={
            "description": "cite it in the events this answer leads to (POST /v1/events) and in feedback ratings "
            "of its movies: it carries what the answer showed, signed"
        }
    )
    experiment = Dict(
        metadata={
            "description": "while an experiment chose this answer's model: its name and the user's variant "
            "(interleaved: both variants' items, drafted in turns)"
        }
    )
    items = List(Nested(RecommendedMovie))
    top_descriptors = List(
        List(Raw()), metadata={"description": "[descriptor, count] pairs: the 10 most common among the items"}
    )
    history_top_descriptors = List(
        List(Raw()), metadata={"description": "[descriptor, count] pairs of the user's history (user queries)"}
    )


class RatingIn(BodySchema):
    class Meta:
        unknown = RAISE

    user_id = Integer(required=True, validate=Range(1, 2**31 - 1))
    movie_id = Integer(required=True, validate=Range(1, 2**31 - 1))
    rating = Float(required=True, allow_nan=False, metadata={"description": "on the dataset's scale"})
    timestamp = Integer(
        validate=Range(0, 2**62), metadata={"description": "seconds since the epoch; the time of the request if absent"}
    )
    recommendation_id = String(
        validate=Length(1, MAX_ID_CHARS),
        metadata={"description": "the answer that showed the movie, when one did: the rating is credited to it"},
    )


class RatingsIn(BodySchema):
    class Meta:
        unknown = RAISE

    ratings = List(Nested(RatingIn), required=True, validate=Length(1, MAX_FEEDBACK_BATCH))


class RatingsStoredOut(Schema):
    dataset = String(metadata={"description": "the dataset that holds the feedback (a feedback version's base)"})
    stored = Integer(metadata={"description": "ratings stored"})
    users = Integer(metadata={"description": "distinct users among them"})
    new_users = List(Integer(), metadata={"description": "users this batch created (unknown to the dataset before)"})


class UserRatingOut(Schema):
    movie_id = Integer()
    title = String()
    rating = Float()
    timestamp = Integer(allow_none=True, metadata={"description": "seconds since the epoch"})
    source = String(metadata={"description": "ingest (the dataset's files) or feedback (posted since)"})


class UserRatingsQuery(Schema):
    class Meta:
        unknown = RAISE

    dataset = String(
        validate=Length(1, 64), metadata={"description": "a dataset id; the active model's dataset if absent"}
    )


class UserRatingsOut(Schema):
    user_id = Integer()
    dataset = String(metadata={"description": "the dataset whose ratings these are (stored and feedback)"})
    ratings = List(Nested(UserRatingOut), metadata={"description": "the last rating of each movie, by time"})


class WaitQuery(Schema):
    class Meta:
        unknown = RAISE

    wait = Float(load_default=0.0, validate=Range(0.0, 30.0), metadata={"description": "seconds to wait, max 30"})


MAX_SEARCH_LIMIT = 100


class MovieSearchQuery(Schema):
    class Meta:
        unknown = RAISE

    q = String(
        required=True,
        validate=Length(1, MAX_QUERY_CHARS),
        metadata={
            "description": "a title as typed: case, accents and punctuation ignored; a year narrows it; at least one "
            "letter or digit once accents are stripped, else 400"
        },
    )
    limit = Integer(load_default=10, validate=Range(1, MAX_SEARCH_LIMIT))

    @validates("q")
    def _has_words(self, value: str, **_: object) -> None:
        if not query_tokens(value):
            raise ValidationError("give at least one letter or digit")


class FoundMovie(Schema):
    movie_id = Integer()
    title = String()
    descriptors = List(String())
    year = Integer(allow_none=True, metadata={"description": "from the title, when it has one"})


class MovieSearchOut(Schema):
    model = String(metadata={"description": "the active model, whose dataset's catalogue was searched"})
    query = String()
    movies = List(Nested(FoundMovie), metadata={"description": "best match first"})


class SimilarQuery(ServeRules, WaitQuery):
    k = Integer(load_default=10, validate=Range(1, MAX_K))


def _distinct(choices: list[str], *, description: str) -> List[Any]:
    """A list of some of ``choices``, each at most once (``uniqueItems`` in /openapi.json), all of them by default."""

    def each_once(value: list[str]) -> None:
        if len(set(value)) != len(value):
            raise ValidationError("each at most once")

    return List(
        String(validate=OneOf(choices)),
        validate=[Length(0, len(choices)), each_once],
        load_default=lambda: list(choices),
        metadata={"description": description, "uniqueItems": True},
    )


class PipelineIn(BodySchema):
    rules = (ExactlyOne("path", "dataset"),)

    path = String(
        validate=Length(1, MAX_PATH_CHARS),
        metadata={"description": "a MovieLens directory to ingest", "pattern": RELATIVE_PATH},
    )
    dataset = String(validate=Length(1, 64), metadata={"description": "or an ingested dataset id"})
    tags_per_movie = Integer(validate=Range(1, MAX_TAGS_PER_MOVIE))
    genres_fix_csv = String(validate=Length(1, MAX_PATH_CHARS), metadata={"pattern": RELATIVE_PATH})
    shard_size = Integer(validate=Range(MIN_SHARD_SIZE, MAX_SHARD_SIZE))
    seed = Integer(validate=Range(0, 2**32 - 1))
    negatives = String(validate=OneOf(STRATEGIES))
    source = String(validate=OneOf(SOURCES))
    positives = Integer(validate=Range(1, MAX_POSITIVES))
    liked_at = Float(validate=Range(MIN_LIKED_AT, MAX_LIKED_AT))
    model = String(validate=Length(1, MAX_MODEL_CHARS), metadata={"pattern": RELATIVE_PATH})
    pooling = String(validate=OneOf(POOLINGS))
    recipe = String(
        validate=OneOf([AUTO, *RECIPES]),
        metadata={
            "description": f"named options (shared/ml/recipes.py), default {DEFAULT_RECIPE}: the recipe and its "
            "setting chosen on a validation split of the dataset; fields given here win"
        },
    )
    activate = Boolean(metadata={"description": "activate the trained model when done (default true)"})
    architecture = String(validate=OneOf(ARCHITECTURES))
    profile = String(validate=OneOf(PROFILES))
    recency_days = _knob("recency_days", real=False)
    prior = _described("prior")
    prior_until = _described("prior_until")
    cold_boost = _described("cold_boost")
    regularization = _described("regularization", above_low=True)
    alpha = _described("alpha")
    layers = _described("layers")
    dropout = _described("dropout")
    epochs = _knob("epochs")
    hidden_dim = _knob("hidden_dim")
    margin = _knob("margin", real=True)
    lr = _knob("lr", real=True)
    batch_size = _knob("batch_size")
    m = Integer(validate=Range(2, 256))
    ef_construction = Integer(validate=Range(10, 4096))
    ef = Integer(validate=Range(10, 4096))


class EvaluateIn(BodySchema):
    rules = (ExactlyOne("path", "dataset"), NotAllEmpty("recipes", "baselines"))

    path = String(
        validate=Length(1, MAX_PATH_CHARS),
        metadata={"description": "a MovieLens directory to ingest", "pattern": RELATIVE_PATH},
    )
    dataset = String(validate=Length(1, 64), metadata={"description": "or an ingested dataset id (with timestamps)"})
    split = String(
        load_default=protocol.DEFAULT_SPLIT,
        validate=OneOf(protocol.SPLITS),
        metadata={"description": "temporal: each user's timeline cut at its own point; global: one cut time for all"},
    )
    new_user_share = Float(
        load_default=protocol.DEFAULT_NEW_USER_SHARE,
        validate=Range(0.0, 0.5),
        metadata={"description": "users held out before training and scored as new users after 1, 3, 10 ratings"},
    )
    tune = Boolean(
        load_default=True,
        metadata={"description": "choose every row's setting on a validation split of the training part"},
    )
    max_evaluated = Integer(
        load_default=0,
        validate=Range(0, 10_000_000),
        metadata={
            "description": "at most this many test users, and per new-user slice, a hashed sample (0: all); "
            "the models still train on the whole training part"
        },
    )
    min_ratings = Integer(
        load_default=protocol.DEFAULT_MIN_RATINGS,
        validate=Range(1, 100_000),
        metadata={"description": "users with fewer ratings are left out"},
    )
    train_fraction = Float(
        load_default=protocol.DEFAULT_TRAIN_FRACTION,
        validate=Range(0.0, 1.0, min_inclusive=False, max_inclusive=False),
        metadata={
            "description": "temporal: each user's earliest round(fraction n) ratings are the training part; "
            "global: the earliest round(fraction r) of all ratings"
        },
    )
    relevant_at = Float(
        load_default=protocol.DEFAULT_RELEVANT_AT,
        validate=Range(0.0, 10.0, min_inclusive=False),
        metadata={"description": "a test rating at least this is a relevant movie"},
    )
    k = Integer(load_default=protocol.DEFAULT_K, validate=Range(1, MAX_K), metadata={"description": "top k"})
    recipes = _distinct(
        list(RECIPES), description=f"recipes trained on the training part, default all: {', '.join(RECIPES)}"
    )
    baselines = _distinct(list(protocol.BASELINES), description=f"default all: {', '.join(protocol.BASELINES)}")
    seed = Integer(
        load_default=protocol.DEFAULT_SEED,
        validate=Range(0, 2**32 - 1),
        metadata={"description": "the recipes' pipelines and the random baseline"},
    )
    shard_users = Integer(
        load_default=protocol.DEFAULT_SHARD_USERS,
        validate=Range(10, 100_000),
        metadata={"description": "evaluated users per scoring shard (each shard ranks them by one row of the table)"},
    )


class ModelListOut(Schema):
    active = String(allow_none=True)
    models = List(
        Dict(),
        metadata={
            "description": "records: dataset, encoder, config, metrics, index, ``evaluation`` (the table of "
            "the last evaluation that trained the version, as POST /v1/jobs/evaluate answers it) and ``chosen`` "
            "(a pipeline of recipe auto: the recipe and setting chosen on validation, why, and every setting's "
            "validation figures)"
        },
    )


class ModelDeletedOut(Schema):
    deleted = String(metadata={"description": "the version deleted"})
    keys = Integer(metadata={"description": "Redis keys deleted: the record and every artifact key"})
    bytes = Integer(metadata={"description": "Redis MEMORY USAGE of those keys just before their deletion"})


class DatasetDeletedOut(ModelDeletedOut):
    models = List(String(), metadata={"description": "the model versions trained on the dataset, deleted with it"})


class DatasetCounts(Schema):
    movies = Integer(metadata={"description": "movies kept (with at least one descriptor)"})
    dropped = Integer(metadata={"description": "movies dropped for having no descriptor"})
    movies_total = Integer()
    users = Integer()
    ratings = Integer(metadata={"description": "rating rows read"})
    ratings_kept = Integer(metadata={"description": "ratings of kept movies"})
    vocabulary = Integer(metadata={"description": "unique descriptor strings"})
    descriptors = Integer(metadata={"description": "descriptor strings over all movies"})


class DatasetOut(Schema):
    id = String()
    source = String()
    options = Dict()
    counts = Nested(DatasetCounts)
    tag_source = String()
    created_at = String()
    ingest = Dict(metadata={"description": "seconds and peak RSS of the ingest"})
    format = Integer()
    derived = Dict(
        allow_none=True,
        metadata={
            "description": "a derived dataset's origin: {from, protocol} (an evaluation's training part) or "
            "{from, feedback: {ratings, users, digest}} (a feedback version: its base with the feedback posted to it)"
        },
    )


class DatasetListOut(Schema):
    datasets = List(Nested(DatasetOut))


class JobError(Schema):
    code = String()
    message = String()
    details = Dict()


class JobOut(Schema):
    id = String()
    kind = String()
    status = String(validate=OneOf(STATUSES))
    progress = Float()
    stage = String(allow_none=True)
    message = String(allow_none=True)
    created_at = String()
    started_at = String(allow_none=True)
    finished_at = String(allow_none=True)
    error = Nested(JobError, allow_none=True)
    result_url = String(allow_none=True)


class JobListQuery(Schema):
    class Meta:
        unknown = RAISE

    status = String(load_default=None, validate=OneOf(STATUSES))
    kind = String(load_default=None, validate=Length(1, 64))
    limit = Integer(load_default=50, validate=Range(1, MAX_LIST_LIMIT))


class JobListOut(Schema):
    jobs = List(Nested(JobOut))


RESULT_FORMATS = {
    "json": "every kind: the job's JSON result (a recommend-batch job's: its summary, not its rows)",
    "npy": "the array the job produced: encode (vectors), triplets ((n, 3) movie ids), recommend-batch (one "
    "structured array, a CSV row each: user_id <i4, rank <i2, movie_id <i4, score <f4); 409 no_such_form for "
    "other kinds",
    "csv": "recommend-batch only, streamed: user_id,rank,movie_id,score,recommendation_id (rank 1 the best; a "
    "user's rows in rank order, users in the job's order; a user's answer's id on each of its rows); 409 "
    "no_such_form for other kinds",
}
"""The result formats, and the kinds of job each applies to (``GET /v1/jobs/<id>/result?format=``)."""


class ResultQuery(Schema):
    class Meta:
        unknown = RAISE

    format = String(
        load_default="json",
        validate=OneOf(list(RESULT_FORMATS)),
        metadata={"description": "; ".join(f"{name}: {what}" for name, what in RESULT_FORMATS.items())},
    )


class HealthOut(Schema):
    status = String()


class ReadyOut(Schema):
    status = String()
    redis = Boolean()
    workers = Dict(keys=String(), values=Integer())
    durability = String(metadata={"description": "how an accepted job reaches disk: waitaof, fsync-always or none"})


class QueueOut(Schema):
    name = String()
    depth = Integer(
        metadata={
            "description": "messages waiting in the queue, every priority step counted (for a key that does not "
            "see the deployment: its tenant's jobs queued there)"
        }
    )
    workers = Integer(metadata={"description": "live workers consuming it (heartbeats)"})


class JobCountsOut(Schema):
    queued = Integer(metadata={"description": "unfinished jobs waiting for a worker, counted now"})
    running = Integer(metadata={"description": "unfinished jobs a worker runs, counted now"})
    succeeded = Integer(metadata={"description": "jobs that finished so since the deployment began"})
    failed = Integer(metadata={"description": "jobs that finished so since the deployment began"})
    cancelled = Integer(metadata={"description": "jobs that finished so since the deployment began"})


class LatestEvaluationOut(Schema):
    model = String(metadata={"description": "the newest model version trained by an evaluation"})
    dataset = String(metadata={"description": "the dataset evaluated"})
    table = Dict(metadata={"description": "the evaluation's table, as POST /v1/jobs/evaluate answers it"})


class TenantCountsOut(Schema):
    tenant = String()
    jobs = Nested(JobCountsOut)
    datasets = Integer(metadata={"description": "datasets the tenant stores"})
    models = Integer(metadata={"description": "model versions the tenant stores"})
    active_model = String(allow_none=True, metadata={"description": "the tenant's active model version; null if none"})


class SystemOut(Schema):
    tenant = String(metadata={"description": "the caller's tenant: every figure but `tenants` is its own"})
    queues = List(
        Nested(QueueOut),
        metadata={
            "description": "every queue, in a fixed order; its depth is every tenant's messages where the key sees "
            "the deployment (see `tenants`), else the caller's tenant's jobs queued there"
        },
    )
    jobs = Nested(JobCountsOut, metadata={"description": "every owner's jobs of the tenant: counts only"})
    active_model = Dict(
        allow_none=True, metadata={"description": "the active model's record as GET /v1/models lists it; null if none"}
    )
    latest_evaluation = Nested(LatestEvaluationOut, allow_none=True, metadata={"description": "null if none"})
    datasets = Integer(metadata={"description": "datasets stored"})
    models = Integer(metadata={"description": "model versions stored"})
    tenants = List(
        Nested(TenantCountsOut),
        allow_none=True,
        metadata={
            "description": "every tenant's counts, each named, where the key sees the deployment (an operator's "
            "key, an open API, an admin's key where every key is of one tenant); null for any other key"
        },
    )


MAX_MAP_MOVIES = 100_000


class ModelMapQuery(Schema):
    class Meta:
        unknown = RAISE

    limit = Integer(
        validate=Range(1, MAX_MAP_MOVIES),
        metadata={"description": "only the movies with the most ratings in the dataset, this many; default all"},
    )


class MapMoviesOut(Schema):
    movie_id = List(Integer())
    x = List(Float(), metadata={"description": "first principal axis, rounded to 4 decimals"})
    y = List(Float(), metadata={"description": "second principal axis, rounded to 4 decimals"})
    genre = List(Integer(), metadata={"description": "the main genre, an index into genres"})
    title = List(String())


class ModelMapOut(Schema):
    version = String()
    dataset = String(metadata={"description": "the dataset whose movies these are"})
    method = String(metadata={"description": "pca: the centred movie vectors on their first two principal axes"})
    explained_variance = List(Float(), metadata={"description": "the fraction of the variance each axis explains"})
    genres = List(
        String(),
        metadata={
            "description": "the main genres of the movies answered, in MovieLens' alphabetical order, (none) last: a "
            "movie's first descriptor when it is a genre"
        },
    )
    movies = Nested(
        MapMoviesOut, metadata={"description": "columns, one entry per movie, in the dataset's catalogue order"}
    )


AUDIT_ID = r"^\d{1,19}-\d{1,19}$"
"""A stream id of the audit trail: what ``before`` pages by. Each part at most 19 digits, so every id the pattern
takes is one Redis can hold (a part is at most 2**64 - 1, 20 digits; a real id's first part is a millisecond
time, 13): the spec's pattern is then the whole rule, and no id it offers is refused."""


class AuditQuery(Schema):
    class Meta:
        unknown = RAISE

    limit = Integer(load_default=100, validate=Range(1, 1000))
    before = String(
        validate=Regexp(AUDIT_ID, error="before is the id of an entry (from a page's next)"),
        metadata={"description": "the next page: entries older than this id (a page's next)"},
    )


class AuditEntryOut(Schema):
    id = String(metadata={"description": "the entry's stream id: its order, and what before pages by"})
    at = String(metadata={"description": "when, ISO 8601 UTC (Redis's clock)"})
    owner = String(metadata={"description": "who: the key's owner id (a hash, never the key); open without keys"})
    role = String(allow_none=True, metadata={"description": "the key's role (null without keys)"})
    action = String(metadata={"description": "the method and route, e.g. POST /v1/datasets"})
    target = Dict(metadata={"description": "the ids in the path"})
    status = Integer(metadata={"description": "the HTTP status answered"})
    outcome = String(metadata={"description": "accepted (a job started), done, refused: quota_exceeded, forbidden"})
    job = String(allow_none=True, metadata={"description": "the job a 202 started"})


class AuditOut(Schema):
    entries = List(Nested(AuditEntryOut), metadata={"description": "newest first"})
    next = String(allow_none=True, metadata={"description": "before= for the next page; null at the end"})
    kept = Dict(metadata={"description": "how much the trail keeps: max_entries and retention_s"})


class QuotaOut(Schema):
    used = Integer(metadata={"description": "what is held now"})
    limit = Integer(allow_none=True, metadata={"description": "the cap; null: none"})
    setting = String(metadata={"description": "the environment variable that sets the cap"})


class DatasetFeedbackOut(Schema):
    dataset = String()
    used = Integer(metadata={"description": "feedback rows stored for the dataset"})


class FeedbackQuotaOut(Schema):
    limit = Integer(allow_none=True, metadata={"description": "rows a dataset may hold; null: no cap"})
    setting = String()
    per_user_limit = Integer(allow_none=True, metadata={"description": "rows one user may hold in a dataset"})
    per_user_setting = String()
    datasets = List(Nested(DatasetFeedbackOut), metadata={"description": "each dataset that holds feedback"})


class QuotasOut(Schema):
    datasets = Nested(QuotaOut)
    models = Nested(QuotaOut)
    feedback_rows = Nested(FeedbackQuotaOut)
    stored_bytes = Nested(QuotaOut, metadata={"description": "bytes the tenant's keys hold in Redis, measured now"})
    jobs_in_flight = Nested(QuotaOut, metadata={"description": "unfinished jobs, a pipeline's stages included"})
    uploads_in_flight_bytes = Nested(QuotaOut, metadata={"description": "bytes the uploads being received hold"})


MAX_EVENTS = 1000
"""Events a request may post."""


class EventIn(BodySchema):
    class Meta:
        unknown = RAISE

    type = String(required=True, validate=OneOf(EVENT_TYPES))
    user_id = Integer(required=True, validate=Range(1, 2**31 - 1))
    movie_id = Integer(required=True, validate=Range(1, 2**31 - 1))
    recommendation_id = String(
        validate=Length(1, MAX_ID_CHARS),
        metadata={
            "description": "the answer that showed the movie (its recommendation_id): the event is credited to "
            "it, and to its experiment if one chose it"
        },
    )
    position = Integer(
        validate=Range(1, MAX_K),
        metadata={"description": "where the answer showed the movie, 1-based; found from the answer when absent"},
    )
    timestamp = Integer(
        validate=Range(0, 2**62), metadata={"description": "seconds since the epoch; the time of the request if absent"}
    )
    rating = Float(
        allow_none=False,
        allow_nan=False,
        metadata={"description": "a rating event's rating, on the dataset's scale (and only theirs)"},
    )


class EventsIn(BodySchema):
    class Meta:
        unknown = RAISE

    events = PlainList(EventIn, required=True, validate=Length(1, MAX_EVENTS), pause=cooperate, pause_every=PAUSE_EVERY)


class EventsHeaders(Schema):
    idempotency_key = String(
        data_key="Idempotency-Key",
        validate=Regexp(r"^[!-~]{1,255}$", error="1 to 255 visible ASCII characters"),
        metadata={"description": "a key of the client's for this batch (1 to 255 visible ASCII characters): the "
                  "batch is stored once, and a retry with the same key within a day is answered as the first "
                  "was (``replayed``), storing and counting nothing; the same key with another batch is 409"},
    )  # fmt: skip


class EventsStoredOut(Schema):
    accepted = Integer(metadata={"description": "events logged (all of the batch)"})
    credited = Integer(metadata={"description": "of them, credited to an experiment's counters"})
    experiments = List(String(), metadata={"description": "the experiments credited"})
    replayed = Boolean(
        metadata={"description": "true when an earlier request with this Idempotency-Key stored the batch: this is "
                  "that request's answer, and nothing was stored again"}
    )  # fmt: skip


class EventsQuery(AuditQuery):
    pass


class EventsOut(Schema):
    events = List(Dict(), metadata={"description": "newest first: each as posted, with what attribution found"})
    next = String(allow_none=True, metadata={"description": "before= for the next page; null at the end"})
    kept = Dict(metadata={"description": "how much the log keeps: max_entries and retention_s"})


EXPERIMENT_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class VariantIn(BodySchema):
    class Meta:
        unknown = RAISE

    model = String(required=True, validate=Length(1, MAX_MODEL_CHARS))
    share = Float(
        load_default=1.0,
        validate=Range(0, 1_000_000, min_inclusive=False),
        allow_nan=False,
        metadata={"description": "its part of the users (shares are normalised); ignored by an interleaving"},
    )
    name = String(validate=Regexp(EXPERIMENT_NAME), metadata={"description": "A, B, ... when absent"})


class ExperimentIn(BodySchema):
    class Meta:
        unknown = RAISE

    name = String(required=True, validate=Regexp(EXPERIMENT_NAME))
    kind = String(
        load_default="ab", validate=OneOf(KINDS),
        metadata={"description": "ab: each user answered by one variant's model, by a keyed hash of their id; "
                  "interleave: every user answered by both of two models at once (team-draft interleaving)"},
    )  # fmt: skip
    unit = String(load_default="user", validate=OneOf(["user"]), metadata={"description": "what is bucketed"})
    variants = List(Nested(VariantIn), required=True, validate=Length(2, 10))
    k = Integer(
        load_default=DEFAULT_K,
        validate=Range(1, MAX_K),
        metadata={"description": "CTR@k's k: positions past it count in all, not in the rates"},
    )
    bucket_s = Integer(
        load_default=DEFAULT_BUCKET_S,
        validate=Range(1, 86_400),
        metadata={"description": "seconds per point of the experiment's time series"},
    )
    seed = Integer(
        validate=Range(0, 2**63 - 1),
        metadata={
            "description": "makes the users' buckets and an interleaving's coins a function of it, so a replay "
            "repeats them (random when absent: who knows the seed can tell a user's variant)"
        },
    )

    @validates_schema(skip_on_field_errors=True)
    def _variants(self, data: dict[str, Any], **_: Any) -> None:
        names = [v["name"] for v in data["variants"] if v.get("name")]
        if len(set(names)) != len(names):
            raise ValidationError("variants' names must differ", field_name="variants")
        if data["kind"] == "interleave" and len(data["variants"]) != 2:
            raise ValidationError("an interleaving has exactly two variants", field_name="variants")


class PromoteQuery(Schema):
    class Meta:
        unknown = RAISE

    variant = String(
        validate=Regexp(EXPERIMENT_NAME),
        metadata={
            "description": "the variant whose model to activate; the winner by the always-valid test when absent"
        },
    )


class ExperimentOut(Schema):
    class Meta:
        unknown = RAISE

    name = String()
    number = Integer()
    kind = String()
    unit = String()
    state = String(metadata={"description": "running, paused or ended"})
    variants = List(
        Dict(),
        metadata={
            "description": "name, model and share; with the report, each one's counts, rates (ctr is CTR@k) "
            "with intervals clustered by user, and each against the first"
        },
    )
    k = Integer()
    bucket_s = Integer()
    dataset = String(metadata={"description": "the one dataset of the variants' models"})
    created = String()
    started = String()
    paused = String()
    ended = String()
    promoted = Dict(allow_none=True)
    level = Float(metadata={"description": "the intervals' confidence level"})
    leader = Dict(
        metadata={"description": "an A/B test's variant with the highest CTR@k, and whether its lead is significant"}
    )
    totals = Dict(metadata={"description": "an interleaving's counts and rates over its answers"})
    interleaving = Dict(
        metadata={
            "description": "an interleaving's preference over users (wins, ties, p-value of the "
            "sign test) and the variant preferred"
        }
    )
    series = Dict(
        metadata={"description": "cumulative impressions and clicks per variant (per team), a point per bucket_s"}
    )


class ExperimentListOut(Schema):
    experiments = List(Nested(ExperimentOut))
