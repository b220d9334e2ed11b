"""A recommendation id: what a later event needs to know of the answer that showed a movie, signed, in the id itself.

    an answer (shared/logic/serving.py, a batch's CSV rows) ──> Served(at, user, experiment, variant, movies, teams)
        └─ sign(secret, served) ──> "r1.<base64url>"      the answer's ``recommendation_id``
    an event citing it (POST /v1/events, a feedback rating) ──> verify(secret, rid) ──> Served, or BadId
        └─ Served.position(movie_id): where the answer showed that movie (1-based), None when it did not

The id carries the answer rather than naming a stored copy of it, so serving writes nothing (an answer path of
hundreds a second would otherwise store hundreds of records a second, forever or until some cap dropped the
ones a late click needs). Its bytes, big-endian:

    version 1 | at u32 (unix seconds) | user_id u32 (0: not a user's answer) | experiment u32 (0: none)
    | variant u8 (INTERLEAVED: both of an interleaving's) | n u8 | teams ceil(n/8) bytes (interleavings only;
    bit i: the team, 0 or 1, that put item i there) | n x u16 movie hashes | nonce 4 | HMAC-SHA256 tag 8

A movie is carried as a 16-bit hash of its id, enough to tell which of an answer's n movies an event names (a
movie the answer did not show matches by chance with probability n / 65,536) and to find its position and, in an
interleaving, its team, without the client having to send either. The tag is keyed by the tenant's secret
(shared/store/events.py), so an id cannot be forged, altered or used in another tenant's keyspace; 10 items
make a 66-character id, 100 items 306 (323 for an interleaving's).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass

TAG = "r1."
"""Every recommendation id starts so (its format's version): anything else is not one."""
INTERLEAVED = 255
"""The variant of an interleaving's answer: its items come from both variants, each movie's team says whose."""
MAX_ITEMS = 100
"""The most movies one id describes: an answer's k is at most 100 (api/schemas.py ``MAX_K``)."""
MAX_ID_CHARS = 400
"""Longer than any id ``sign`` makes (100 items of an interleaving: 323 characters), and so the longest an event
may cite."""
_TEXT = re.compile(r"^[A-Za-z0-9_-]+$")

_HEAD = struct.Struct(">BIIIBB")
_VERSION = 1
_NONCE_BYTES = 4
_MAC_BYTES = 8


class BadId(ValueError):
    """Not a recommendation id of this tenant: malformed, altered, or signed with another secret."""


def movie_hash(movie_id: int) -> int:
    """A movie id's 16 bits in an id (Knuth's multiplicative hash: ids close together spread apart)."""
    return ((movie_id * 2654435761) & 0xFFFFFFFF) >> 16


@dataclass(frozen=True)
class Served:
    """What an answer showed, as its id carries it."""

    at: int  # unix seconds the answer was made
    user_id: int  # 0: not a user's answer (keywords, examples, a movie's neighbours)
    experiment: int  # the experiment's number (shared/store/experiments.py), 0: none
    variant: int  # the variant's index, INTERLEAVED for an interleaving, 0 without an experiment
    hashes: tuple[int, ...]  # ``movie_hash`` of each item, in the answer's order
    teams: tuple[int, ...] = ()  # an interleaving's: the team (0, 1) of each item

    @classmethod
    def of(
        cls, movie_ids: Sequence[int], *, at: int, user_id: int = 0, experiment: int = 0, variant: int = 0,
        teams: Sequence[int] = (),
    ) -> Served:  # fmt: skip
        return cls(at, user_id, experiment, variant, tuple(movie_hash(m) for m in movie_ids[:MAX_ITEMS]),
                   tuple(teams[:MAX_ITEMS]))  # fmt: skip

    def position(self, movie_id: int) -> int | None:
        """Where the answer showed ``movie_id``, 1-based; None when it did not show it."""
        wanted = movie_hash(movie_id)
        for i, h in enumerate(self.hashes):
            if h == wanted:
                return i + 1
        return None

    def team(self, position: int) -> int | None:
        """The team that put the item at ``position`` (1-based) into an interleaving's answer; None otherwise."""
        return self.teams[position - 1] if self.teams and 1 <= position <= len(self.teams) else None


def sign(secret: bytes, served: Served) -> str:
    """``served`` as a recommendation id, tagged with ``secret``."""
    n = len(served.hashes)
    body = _HEAD.pack(_VERSION, served.at, served.user_id, served.experiment, served.variant, n)
    if served.variant == INTERLEAVED:
        bits = bytearray((n + 7) // 8)
        for i, team in enumerate(served.teams):
            if team:
                bits[i // 8] |= 1 << (i % 8)
        body += bytes(bits)
    body += struct.pack(f">{n}H", *served.hashes) + os.urandom(_NONCE_BYTES)
    mac = hmac.new(secret, body, hashlib.sha256).digest()[:_MAC_BYTES]
    return TAG + base64.urlsafe_b64encode(body + mac).rstrip(b"=").decode()


def verify(secret: bytes, rid: str) -> Served:
    """The answer a recommendation id describes; BadId unless ``secret`` signed it, unaltered."""
    if not rid.startswith(TAG) or len(rid) > MAX_ID_CHARS:
        raise BadId("not a recommendation id")
    text = rid[len(TAG) :]
    if not _TEXT.match(text):
        raise BadId("not a recommendation id")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise BadId("not a recommendation id") from None
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode() != text:  # a last character's unused bits altered
        raise BadId("not a recommendation id")
    if len(raw) < _HEAD.size + _NONCE_BYTES + _MAC_BYTES:
        raise BadId("not a recommendation id")
    body, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
    if not hmac.compare_digest(mac, hmac.new(secret, body, hashlib.sha256).digest()[:_MAC_BYTES]):
        raise BadId("a recommendation id this service did not make (or altered)")
    version, at, user_id, experiment, variant, n = _HEAD.unpack_from(body)
    teams_bytes = (n + 7) // 8 if variant == INTERLEAVED else 0
    if version != _VERSION or len(body) != _HEAD.size + teams_bytes + 2 * n + _NONCE_BYTES:
        raise BadId("not a recommendation id")
    bits = body[_HEAD.size : _HEAD.size + teams_bytes]
    teams = tuple((bits[i // 8] >> (i % 8)) & 1 for i in range(n)) if teams_bytes else ()
    hashes = struct.unpack_from(f">{n}H", body, _HEAD.size + teams_bytes)
    return Served(at, user_id, experiment, variant, tuple(hashes), teams)
