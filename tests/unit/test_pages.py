"""The cursor of a recommendation session (shared/ml/pages.py): what it carries, its size, and what it refuses."""

from __future__ import annotations

import base64
import zlib

import numpy as np
import pytest

from shared.ml.pages import MAX_SHOWN, TAG, decode_cursor, encode_cursor, next_cursor


def test_a_cursor_carries_the_ids_answered_as_a_set_and_stays_small() -> None:
    assert decode_cursor(encode_cursor([])) == []
    assert decode_cursor(encode_cursor([30, 10, 20, 10])) == [10, 20, 30]
    ids = np.random.default_rng(0).choice(200_000, size=1000, replace=False) + 1
    cursor = encode_cursor(ids.tolist())
    assert decode_cursor(cursor) == sorted(ids.tolist()) and len(cursor) < 4000  # 1,000 ids in under 4 kB
    assert decode_cursor(encode_cursor([2**31 - 1, 1])) == [1, 2**31 - 1]
    assert decode_cursor(next_cursor([1, 2], [2, 3]) or "") == [1, 2, 3]
    assert next_cursor(range(1, MAX_SHOWN), [MAX_SHOWN]) is not None
    assert next_cursor(range(1, MAX_SHOWN + 1), [MAX_SHOWN + 1]) is None  # past the session's bound: no next page


def _packed(raw: bytes) -> str:
    return TAG + base64.urlsafe_b64encode(zlib.compress(raw)).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "x1.abc",
        "p1.@@@",
        "p1.AAAA",  # not zlib
        _packed(b"\x01\x00\x00"),  # not whole uint32s
        _packed(np.array([5, 0], dtype="<u4").tobytes()),  # a repeated id
        _packed(np.array([0], dtype="<u4").tobytes()),  # id 0
        _packed(np.array([2**31, 0], dtype="<u4").tobytes()[:4]),  # past 2^31 - 1
        _packed(np.ones(MAX_SHOWN + 1, dtype="<u4").tobytes()),  # too many
        _packed(b"\x01\x00\x00\x00" * 10_000_000)[:200],  # a truncated stream
    ],
)
def test_a_cursor_that_is_not_one_of_ours_is_refused_saying_so(cursor: str) -> None:
    with pytest.raises(ValueError, match="cursor"):
        decode_cursor(cursor)
