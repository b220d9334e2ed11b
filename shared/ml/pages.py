"""Pages of one recommendation session: the cursor that carries what was answered so far.

    page 1:  POST /v1/recommendations {"user_id": 7, "k": 10}              -> items, next_cursor = C1 (those 10)
    page 2:  POST /v1/recommendations {"user_id": 7, "k": 10, "cursor": C1} -> 10 more, none of C1's; C2 (all 20)
    ...      until the session has been answered ``MAX_SHOWN`` movies: then next_cursor is null

The cursor is the set of movie ids answered, nothing else: sorted, delta-coded as little-endian uint32, zlib'd,
URL-safe base64 behind a version tag (``p1.``), so 1,000 ids take a few kB. It is not signed: forging one can
only make its own session skip movies, which ``exclude`` does openly. Each page is the query's answer with the
cursor's ids excluded (shared/ml/recommend.py ``Rules``), so no movie comes twice in a session, however the
ranking moves between pages (a rating posted, another model activated). Pure: no Redis, no Flask.
"""

from __future__ import annotations

import base64
import binascii
import struct
import zlib
from collections.abc import Iterable

import numpy as np

TAG = "p1."
MAX_SHOWN = 5000
"""Movies one session may be answered; past them, no next page."""

MAX_ID = 2**31 - 1


def encode_cursor(movie_ids: Iterable[int]) -> str:
    """The cursor of a session that has been answered ``movie_ids`` (plain Python: on every answer's path, where a
    page is tens of ids, numpy's call overhead would cost more than the work)."""
    ids = sorted(set(movie_ids))
    deltas = struct.pack(f"<{len(ids)}I", *(b - a for a, b in zip([0, *ids], ids, strict=False)))
    return TAG + base64.urlsafe_b64encode(zlib.compress(deltas)).decode().rstrip("=")


def decode_cursor(cursor: str) -> list[int]:
    """The movie ids a cursor carries, ascending; ValueError saying what is wrong with one that is not ours."""
    if not cursor.startswith(TAG):
        raise ValueError("not a cursor of this API (send back a next_cursor as it was answered)")
    body = cursor[len(TAG) :]
    try:
        packed = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        inflate = zlib.decompressobj()
        raw = inflate.decompress(packed, MAX_SHOWN * 4 + 4)
    except (binascii.Error, ValueError, zlib.error):
        raise ValueError("the cursor is damaged (send back a next_cursor as it was answered)") from None
    if inflate.unconsumed_tail or len(raw) % 4 or len(raw) > MAX_SHOWN * 4 or not inflate.eof:
        raise ValueError(f"the cursor is damaged or holds more than {MAX_SHOWN} movies")
    ids = np.cumsum(np.frombuffer(raw, dtype="<u4").astype(np.int64))
    if len(ids) and (ids[-1] > MAX_ID or np.any(np.diff(ids) <= 0) or ids[0] < 1):
        raise ValueError("the cursor is damaged (send back a next_cursor as it was answered)")
    return [int(i) for i in ids]


def next_cursor(shown: Iterable[int], answered: Iterable[int]) -> str | None:
    """The cursor after a page: what was shown before and this page's movies; None past ``MAX_SHOWN``."""
    seen = set(shown) | set(answered)
    return encode_cursor(seen) if len(seen) <= MAX_SHOWN else None
