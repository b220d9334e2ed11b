"""A recommendation id carries its answer, signed (shared/ml/attribution.py); credited events count where they
should (shared/logic/online.py ``increments``)."""

from __future__ import annotations

import base64
import random

import pytest

from shared.logic.online import increments, interleaved
from shared.ml.attribution import INTERLEAVED, MAX_ID_CHARS, BadId, Served, movie_hash, sign, verify

SECRET = b"k" * 32


def test_an_id_reads_back_to_the_answer_it_was_made_for() -> None:
    served = Served.of([10, 20, 30], at=1_700_000_000, user_id=7, experiment=3, variant=1)
    rid = sign(SECRET, served)
    assert rid.startswith("r1.") and len(rid) < 60
    back = verify(SECRET, rid)
    assert back == served
    assert [back.position(m) for m in (10, 20, 30, 40)] == [1, 2, 3, None]
    assert back.team(1) is None  # not an interleaving
    assert sign(SECRET, served) != rid  # a nonce: two answers alike have two ids


def test_an_interleavings_id_carries_each_items_team() -> None:
    teams = [0, 1, 1, 0, 1, 0, 0, 1, 1]  # nine items: the team bits take two bytes
    served = Served.of(list(range(101, 110)), at=5, user_id=1, experiment=2, variant=INTERLEAVED, teams=teams)
    back = verify(SECRET, sign(SECRET, served))
    assert [back.team(p) for p in range(1, 10)] == teams and back.team(10) is None


def test_the_longest_answer_fits_the_id_limit() -> None:
    served = Served.of(list(range(1, 300)), at=5, user_id=1, experiment=2, variant=INTERLEAVED, teams=[1] * 299)
    rid = sign(SECRET, served)
    assert len(verify(SECRET, rid).hashes) == 100 and len(rid) == 323 <= MAX_ID_CHARS


@pytest.mark.parametrize(
    "damage",
    [
        lambda rid: rid[:-1] + ("A" if rid[-1] != "A" else "B"),  # the tag
        lambda rid: rid[:10] + ("A" if rid[10] != "A" else "B") + rid[11:],  # the body
        lambda rid: rid[:-8],  # cut short
        lambda rid: "r2." + rid[3:],
        lambda rid: rid + "=====",
        lambda rid: "r1.",
        lambda rid: "r1." + "!" * 20,
        lambda rid: "x" * (MAX_ID_CHARS + 1),
    ],
)
def test_a_damaged_or_forged_id_is_refused(damage: object) -> None:
    rid = sign(SECRET, Served.of([1, 2], at=5, user_id=1))
    with pytest.raises(BadId):
        verify(SECRET, damage(rid))


def test_another_secret_s_id_is_refused() -> None:
    """Each tenant signs with its own secret: another tenant's ids are not this one's."""
    with pytest.raises(BadId, match="did not make"):
        verify(b"other" * 8, sign(SECRET, Served.of([1], at=5)))


def test_a_body_re_signed_without_the_secret_is_refused() -> None:
    rid = sign(SECRET, Served.of([1], at=5, user_id=3))
    raw = bytearray(base64.urlsafe_b64decode(rid[3:] + "=" * (-len(rid[3:]) % 4)))
    raw[6] ^= 1  # another user id, the tag left as it was
    with pytest.raises(BadId):
        verify(SECRET, "r1." + base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode())


def test_movie_hashes_spread_neighbouring_ids() -> None:
    assert len({movie_hash(m) for m in range(1, 1001)}) > 990


def event(kind: str, user: int, position: int, variant: int = 0, **more: object) -> dict[str, object]:
    return {"type": kind, "user_id": user, "movie_id": 1, "position": position, "variant": variant, **more}


def test_increments_count_by_variant_user_position_and_bucket() -> None:
    record = {"k": 3, "bucket_s": 60}
    totals, users, series = increments(
        record,
        [
            event("impression", 1, 1), event("impression", 1, 4), event("click", 1, 1), event("click", 1, 4),
            event("play", 1, 2), event("rating", 1, 2, rating=4.0), event("rating", 1, 2, rating=3.5),
            event("impression", 2, 2, variant=1),
        ],
        now=125.0,
    )  # fmt: skip
    assert totals == {"0:impressions": 2, "0:impressions@k": 1, "0:clicks": 2, "0:clicks@k": 1, "0:plays": 1,
                      "0:ratings": 2, "0:liked": 1, "1:impressions": 1, "1:impressions@k": 1}  # fmt: skip
    assert users == {"1:0:i": 1, "1:0:c": 1, "1:0:p": 1, "1:0:l": 1, "2:1:i": 1}
    assert series == {"120:0:i": 1, "120:0:c": 1, "120:1:i": 1}


def test_an_interleavings_click_is_credited_to_its_team() -> None:
    totals, users, series = increments(
        {"k": 10, "bucket_s": 10}, [event("click", 5, 2, variant=INTERLEAVED, team=1)], now=3.0
    )
    assert totals == {"x:clicks": 1, "x:clicks@k": 1, "t1:clicks@k": 1}
    assert users == {"5:x:c": 1, "5:t1": 1} and series == {"0:x:c": 1, "0:t1": 1}


def answer(model: str, ids: list[int]) -> dict[str, object]:
    return {"model": model, "items": [{"movie_id": m, "score": 1.0 / (i + 1), "by": model} for i, m in enumerate(ids)]}


def test_interleaved_answers_keep_each_items_own_model_entry_and_page_on() -> None:
    merged, teams = interleaved(answer("a", [1, 2, 3, 4]), answer("b", [2, 5, 6, 7]), {"k": 4, "shown": []},
                                rng=random.Random(0))  # fmt: skip
    ids = [item["movie_id"] for item in merged["items"]]
    assert len(ids) == 4 and len(teams) == 4 and set(ids) <= {1, 2, 3, 4, 5, 6, 7}
    for item, team in zip(merged["items"], teams, strict=True):
        assert item["movie_id"] in ([1, 2, 3, 4] if team == 0 else [2, 5, 6, 7])
        assert item["by"] == "ab"[team]  # the entry (and score) of the model that picked it
    assert "interleaved" in merged["explanation"] and merged["next_cursor"]
