"""``PlainList`` (api/openapi.py) loads a list of flat objects as marshmallow's ``List(Nested(...))`` does, only
faster: the same items out, the same refusals (it hands anything not plainly valid to marshmallow)."""

from __future__ import annotations

import math
from typing import Any

from apiflask import Schema
from apiflask.fields import Float, Integer, List, Nested, String
from hypothesis import given, settings
from hypothesis import strategies as st
from marshmallow import ValidationError

from api.openapi import PlainList, _plain_fields
from api.schemas import EventIn, EventsIn


class Slow(Schema):
    events = List(Nested(EventIn), required=True)


def load(schema: Schema, body: Any) -> tuple[bool, Any]:
    try:
        return True, schema.load(body)
    except ValidationError as err:
        return False, err.messages


FIELDS = ["type", "user_id", "movie_id", "recommendation_id", "position", "timestamp", "rating", "other"]
VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 2**63), st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["impression", "click", "play", "rating", "view", "", "r1.x" * 120]), st.text(max_size=8),
    st.lists(st.integers(), max_size=2),
    st.sampled_from([0, 1, 5, 100, 101, 2**31 - 1, 2**31, 3.0, 4.5, 1e300]),
)  # fmt: skip
ITEM = st.dictionaries(st.sampled_from(FIELDS), VALUES, max_size=8)
VALID = st.fixed_dictionaries(
    {"type": st.sampled_from(["impression", "click", "play"]), "user_id": st.integers(1, 2**31 - 1),
     "movie_id": st.integers(1, 2**31 - 1)},
    optional={"position": st.integers(1, 100), "timestamp": st.integers(0, 2**40),
              "recommendation_id": st.text(min_size=1, max_size=400), "rating": st.floats(0, 5) | st.integers(0, 5)},
)  # fmt: skip


@settings(max_examples=600, deadline=None)
@given(st.lists(st.one_of(ITEM, VALID), min_size=1, max_size=4))
def test_plain_and_marshmallow_loads_agree(items: list[Any]) -> None:
    fast_ok, fast = load(EventsIn(), {"events": items})
    slow_ok, slow = load(Slow(), {"events": items})
    assert fast_ok == slow_ok, (items, fast, slow)
    if fast_ok:
        assert fast["events"] == slow["events"]
        for got in fast["events"]:
            assert all(type(got[n]) is float for n in got if n == "rating")
    else:
        assert fast["events"] == slow["events"]


@given(st.lists(VALID, min_size=1, max_size=5))
def test_valid_events_take_the_plain_path(items: list[Any]) -> None:
    fields = _plain_fields(EventIn())
    assert fields is not None
    loaded = EventsIn().load({"events": items})["events"]
    assert loaded == [{k: float(v) if k == "rating" else v for k, v in item.items()} for item in items]
    assert all(math.isfinite(e.get("rating", 0)) for e in loaded)


def test_schemas_it_cannot_check_plainly_go_to_marshmallow() -> None:
    class Defaulted(Schema):
        n = Integer(load_default=3)

    class Nullable(Schema):
        s = String(allow_none=True)

    class Nan(Schema):
        f = Float(allow_nan=True)

    class Keyed(Schema):
        s = String(data_key="S")

    for schema in (Defaulted, Nullable, Nan, Keyed):
        assert _plain_fields(schema()) is None
    assert PlainList(Defaulted).deserialize([{}]) == [{"n": 3}]  # marshmallow's own answer


def test_a_long_list_pauses_between_slices_and_loads_the_same() -> None:
    paused: list[int] = []

    class Paced(Schema):
        events = PlainList(EventIn, required=True, pause=lambda: paused.append(1), pause_every=25)

    body = {"events": [{"type": "click", "user_id": u, "movie_id": 1} for u in range(1, 61)]}
    assert Paced().load(body) == Slow().load(body) and len(paused) == 2  # after items 25 and 50, not before the first
