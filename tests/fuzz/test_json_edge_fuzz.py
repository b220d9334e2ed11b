"""Bodies schemathesis never writes: JSON that Python's parser takes and RFC 8259 or UTF-8 does not.

Schemathesis sends what its JSON encoder can write, so it never sends NaN, Infinity, lone surrogates
(``"\\ud800"``), thousands of nested brackets or a 5,000-digit number. Here Hypothesis builds those into
otherwise valid bodies of every POST route, one field replaced by an odd value, and the answer must be:

    the body holds NaN/Infinity, a non-finite number, a lone surrogate, too deep a nesting   -> 400
    any other Unicode in encode's texts                                   -> 202, stored exactly as sent
    anything else                                                                             -> not a 5xx
    every refusal                                             -> the error envelope, and nothing enqueued

Run on the fuzzed app of tests/fuzz/conftest.py (real Redis, API keys on, no worker on its prefix).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from tests.fuzz.conftest import AUTH, Seeded

EXAMPLES = 400
LONG_EXAMPLES = 5000

_SURROGATE = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
_ANY_CHAR = st.characters(codec=None)  # every code point, lone surrogates included
_TEXT = st.one_of(st.text(_ANY_CHAR, max_size=12), st.text(max_size=12))
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),  # NaN and +-inf included: json.dumps writes them as NaN / Infinity
    _TEXT,
)
_VALUES = st.recursive(
    _SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_TEXT, children, max_size=4),
    max_leaves=12,
)


def _bodies(seeded: Seeded) -> dict[str, dict[str, Any]]:
    """A valid body per POST route; the fuzzer replaces or adds one field."""
    return {
        "/v1/datasets": {"path": "ml-latest-small", "tags_per_movie": 5},
        "/v1/jobs/triplets": {"dataset": seeded.dataset, "shard_size": 500},
        "/v1/jobs/encode": {"texts": ["war", "drama"], "pooling": "cls"},
        "/v1/jobs/train": {"dataset": seeded.dataset, "epochs": 2, "lr": 0.01},
        "/v1/jobs/index": {"version": seeded.model, "m": 16},
        "/v1/pipelines": {"dataset": seeded.dataset, "epochs": 1},
        "/v1/recommendations": {"keywords": ["war"], "k": 5},
    }


def _odd(value: Any) -> bool:
    """What the edge must refuse: a non-finite number or a lone surrogate anywhere in the value."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, str):
        return any("\ud800" <= c <= "\udfff" for c in value)
    if isinstance(value, list):
        return any(map(_odd, value))
    if isinstance(value, dict):
        return any(_odd(k) or _odd(v) for k, v in value.items())
    return False


@st.composite
def _cases(draw: st.DrawFn, bodies: dict[str, dict[str, Any]]) -> tuple[str, str, bool]:
    """(route, raw body, must be refused)."""
    route = draw(st.sampled_from(sorted(bodies)))
    body = dict(bodies[route])
    shape = draw(st.sampled_from(["field", "field", "field", "nested", "digits", "raw", "unicode"]))
    if shape == "unicode":  # any Unicode but lone surrogates: accepted, stored as sent (checked by the caller)
        texts = draw(st.lists(st.text(min_size=1, max_size=40), min_size=1, max_size=5))
        return "/v1/jobs/encode", json.dumps({"texts": texts}, ensure_ascii=draw(st.booleans())), False
    if shape == "digits":  # int() refuses more than 4,300 digits: a ValueError, not a decode error
        digits = draw(st.integers(min_value=4301, max_value=20_000))
        return route, json.dumps(body)[:-1] + f', "k": {"9" * digits}}}', True
    if shape == "nested":  # the C parser's recursion limit, and our depth limit below it
        depth = draw(st.integers(min_value=33, max_value=200_000))
        return route, json.dumps(body)[:-1] + ', "k": ' + "[" * depth + "]" * depth + "}", True
    if shape == "raw":  # the whole body an odd value
        value = draw(_VALUES)
        return route, json.dumps(value, allow_nan=True), _odd(value)
    name = draw(st.sampled_from([*body, "k", "texts", "keywords", "path", "model"]) | _TEXT)
    value = draw(_VALUES)
    body[name] = value
    return route, json.dumps(body, allow_nan=True), _odd(value) or _odd(name)


def _fuzz(app: Any, seeded: Seeded, examples: int) -> Counter[int]:
    client = app.test_client()
    statuses: Counter[int] = Counter()
    svc = app.extensions["movierec"]
    index = f"{svc.settings.key_prefix}:jobs"  # every job ever recorded under the prefix

    @given(case=_cases(_bodies(seeded)))
    @hypothesis_settings(
        max_examples=examples,
        derandomize=examples == EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def check(case: tuple[str, str, bool]) -> None:
        route, raw, refuse = case
        before = svc.redis.zcard(index)
        r = client.post(route, data=raw, content_type="application/json", headers=AUTH)
        statuses[r.status_code] += 1
        assert r.status_code < 500, (route, raw[:300], r.get_data(as_text=True))
        if refuse:
            assert r.status_code == 400, (route, raw[:300], r.get_data(as_text=True))
        if route == "/v1/jobs/encode" and r.status_code == 202:  # the strings went to Redis unchanged
            job = svc.jobs.get(r.get_json()["id"])
            assert svc.artifacts.get_json(job.params["input"]) == json.loads(raw)["texts"]
        if r.status_code >= 400:
            error = r.get_json()["error"]
            assert set(error) == {"code", "message", "details"}
            assert svc.redis.zcard(index) == before  # refused: nothing recorded, nothing queued

    check()
    return statuses


def test_odd_json_is_refused_never_a_500(fuzz_app: tuple[Any, Seeded]) -> None:
    statuses = _fuzz(*fuzz_app, EXAMPLES)
    print(f"\nodd JSON: {sum(statuses.values())} requests, by status {dict(sorted(statuses.items()))}")
    assert sum(statuses.values()) >= EXAMPLES // 2 and {202, 400} <= set(statuses)


@pytest.mark.fuzz_long
@pytest.mark.timeout(3600)
def test_odd_json_is_refused_never_a_500_long(fuzz_app: tuple[Any, Seeded]) -> None:
    statuses = _fuzz(*fuzz_app, LONG_EXAMPLES)
    print(f"\nodd JSON: {sum(statuses.values())} requests, by status {dict(sorted(statuses.items()))}")
