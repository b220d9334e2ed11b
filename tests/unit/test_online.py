"""Online experiments: the bucket against an HMAC written out by hand, the variants' shares over 100,000 users,
team-draft interleaving against hand-drafted answers and a round-by-round reference, and the A/B and interleaving
statistics against hand-computed cases."""

from __future__ import annotations

import hashlib
import math
import random

import numpy as np
import pytest

from shared.ml import online
from shared.ml.online import (
    LEVEL,
    Difference,
    Preference,
    Ratio,
    bucket,
    difference,
    mixture_p,
    preference,
    ratio,
    sign_mixture_p,
    team_draft,
    variant_of,
)

Z95 = 1.959963984540054  # scipy.stats.norm.ppf(0.975)
Z90 = 1.6448536269514722  # scipy.stats.norm.ppf(0.95)


# -- bucket --------------------------------------------------------------------------------------------------
def hand_hmac_sha256(key: bytes, msg: bytes) -> bytes:
    """RFC 2104 written out: H((K ^ opad) || H((K ^ ipad) || msg)), K zero-padded to SHA-256's 64-byte block
    (the keys here are shorter than a block, so none is hashed first)."""
    assert len(key) <= 64
    block = key.ljust(64, b"\0")
    inner = hashlib.sha256(bytes(x ^ 0x36 for x in block) + msg).digest()
    return hashlib.sha256(bytes(x ^ 0x5C for x in block) + inner).digest()


def test_bucket_is_the_hmac_written_out() -> None:
    for salt, user in [(b"exp-7", 42), (b"", 0), (b"a longer salt of an experiment", 123_456_789), (b"s", -3)]:
        digest = hand_hmac_sha256(salt, str(user).encode())
        assert bucket(salt, user) == int.from_bytes(digest[:8], "big") / 2**64
    # Pinned from another process: the same value after any restart, whatever PYTHONHASHSEED.
    assert bucket(b"exp-7", 42) == 0x3C618C513FA84D2B / 2**64
    assert bucket(b"exp-7", 42) == pytest.approx(0.2358634661065093, abs=1e-16)


def test_bucket_is_in_the_unit_interval_deterministic_and_salted() -> None:
    first = [bucket(b"exp-1", u) for u in range(2000)]
    assert all(0.0 <= x < 1.0 for x in first)
    assert [bucket(b"exp-1", u) for u in range(2000)] == first
    other = [bucket(b"exp-2", u) for u in range(2000)]
    assert sum(x != y for x, y in zip(first, other, strict=True)) == 2000
    # Spread over [0, 1): a tenth of the users in each tenth, 200 give or take 4.5 standard deviations (13.4).
    counts = np.bincount((np.array(first) * 10).astype(int), minlength=10)
    assert counts.min() > 200 - 60 and counts.max() < 200 + 60


def test_a_digest_of_all_ones_stays_below_one() -> None:
    # 0xFF..FF / 2**64 rounds to 1.0 as a double; the bucket takes the double just below.
    assert online._fraction(b"\xff" * 8) == math.nextafter(1.0, 0.0)
    assert online._fraction(b"\x00" * 8) == 0.0
    assert online._fraction(b"\x80" + b"\x00" * 7) == 0.5


# -- variant_of ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shares", [[0.5, 0.5], [1, 1, 2]])
def test_shares_within_a_point_of_their_targets_over_100_000_users(shares: list[float]) -> None:
    variants = np.array([variant_of(b"exp-shares", u, shares) for u in range(100_000)])
    got = np.bincount(variants, minlength=len(shares)) / 100_000
    want = np.array(shares) / sum(shares)
    assert np.abs(got - want).max() < 0.01, got


def test_same_user_same_variant_and_the_bounds_are_the_shares() -> None:
    for user in range(500):
        v = variant_of(b"exp-3", user, [1, 1, 2])
        assert variant_of(b"exp-3", user, [1, 1, 2]) == v
        assert variant_of(b"exp-3", user, [0.25, 0.25, 0.5]) == v  # only the proportions count
        u = bucket(b"exp-3", user)
        assert v == (0 if u < 0.25 else 1 if u < 0.5 else 2)
    assert {variant_of(b"exp-3", u, [3]) for u in range(50)} == {0}


def test_two_salts_split_the_users_independently() -> None:
    # An unkeyed hash would put the same half of the users in variant 1 of both experiments (0.5, not 0.25).
    both = sum(variant_of(b"exp-a", u, [1, 1]) == variant_of(b"exp-b", u, [1, 1]) == 1 for u in range(20_000))
    assert abs(both / 20_000 - 0.25) < 0.01


def test_variant_of_the_last_bucket_and_bad_shares(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(online, "bucket", lambda salt, user_id: math.nextafter(1.0, 0.0))
    assert variant_of(b"s", 1, [1, 1, 1]) == 2
    monkeypatch.setattr(online, "bucket", lambda salt, user_id: 1.0)  # beyond every bound: the last, not 3
    assert variant_of(b"s", 1, [1, 1, 1]) == 2
    for bad in ([], [1, 0], [1, -1], [1, math.nan], [math.inf]):
        with pytest.raises(ValueError, match="positive"):
            variant_of(b"s", 1, bad)


# -- team_draft ----------------------------------------------------------------------------------------------
class Coins(random.Random):
    """A random.Random whose random() returns the scripted coins in order and fails on a draw beyond them."""

    def __init__(self, *coins: float) -> None:
        super().__init__(0)
        self.coins = list(coins)

    def random(self) -> float:
        if not self.coins:
            raise AssertionError("a coin drawn beyond the script")
        return self.coins.pop(0)


A_FIRST, B_FIRST = 0.3, 0.7  # rng.random() < 0.5 sends team a first


@pytest.mark.parametrize(
    ("coins", "k", "items", "teams"),
    [
        # round 1, a first: a takes 1, b takes 2; round 2, b first: b's 1 is taken, so 5; a's 2 is taken, so 3
        ((A_FIRST, B_FIRST), 4, [1, 2, 5, 3], [0, 1, 1, 0]),
        # round 1, b first: b takes 2, a takes 1; round 2, a first: a takes 3, b takes 5
        ((B_FIRST, A_FIRST), 4, [2, 1, 3, 5], [1, 0, 0, 1]),
        ((A_FIRST, A_FIRST), 4, [1, 2, 3, 5], [0, 1, 0, 1]),
        ((B_FIRST, B_FIRST), 4, [2, 1, 5, 3], [1, 0, 1, 0]),
        # k = 3: round 2's first pick fills the list; its second is never made
        ((A_FIRST, B_FIRST), 3, [1, 2, 5], [0, 1, 1]),
        # k = 1: one pick, one coin
        ((B_FIRST,), 1, [2], [1]),
        # k = 8 > the 6 distinct items: round 3, a first: a takes 4, b takes 6; both are then empty
        ((A_FIRST, B_FIRST, A_FIRST), 8, [1, 2, 5, 3, 4, 6], [0, 1, 1, 0, 0, 1]),
    ],
)
def test_team_draft_hand_drafted(coins: tuple[float, ...], k: int, items: list[int], teams: list[int]) -> None:
    rng = Coins(*coins)
    assert team_draft([1, 2, 3, 4], [2, 1, 5, 6], k=k, rng=rng) == (items, teams)
    assert rng.coins == []  # one coin per round, every one used


def test_team_draft_identical_rankings_keep_the_ranking_and_split_the_credit() -> None:
    rng = Coins(A_FIRST, B_FIRST, B_FIRST)
    items, teams = team_draft([7, 8, 9, 10, 11], [7, 8, 9, 10, 11], k=5, rng=rng)
    assert items == [7, 8, 9, 10, 11]  # both teams want the same next item, so the order is the ranking's
    assert teams == [0, 1, 1, 0, 1]
    assert rng.coins == []


def test_team_draft_a_shorter_ranking_passes_and_the_other_keeps_picking() -> None:
    # One coin only: once a has nothing left there is no order to decide (Coins fails on a second draw).
    rng = Coins(B_FIRST)
    assert team_draft([1], [2, 3, 4, 5], k=4, rng=rng) == ([2, 1, 3, 4], [1, 0, 1, 1])
    # a's only item is b's first: a passes from the start, after the first round's coin.
    assert team_draft([2], [2, 3, 4], k=4, rng=Coins(B_FIRST)) == ([2, 3, 4], [1, 1, 1])
    assert team_draft([2], [2, 3, 4], k=4, rng=Coins(A_FIRST)) == ([2, 3, 4], [0, 1, 1])
    # An empty ranking never flips a coin.
    assert team_draft([], [4, 5, 6], k=2, rng=Coins()) == ([4, 5], [1, 1])
    assert team_draft([4, 5, 6], [], k=5, rng=Coins()) == ([4, 5, 6], [0, 0, 0])
    assert team_draft([], [], k=3, rng=Coins()) == ([], [])


def test_team_draft_refuses_k_below_one() -> None:
    with pytest.raises(ValueError, match="k must be at least 1"):
        team_draft([1], [2], k=0, rng=random.Random(0))


def rounds_reference(a: list[int], b: list[int], *, k: int, rng: random.Random) -> tuple[list[int], list[int]]:
    """team_draft's docstring, round by round: fewer picks first, a coin when equal (and both can pick), then
    each team in turn its highest-ranked item not yet in the list."""
    items: list[int] = []
    teams: list[int] = []

    def left(team: int) -> list[int]:
        return [x for x in (a, b)[team] if x not in items]

    while len(items) < k and (left(0) or left(1)):
        picks = (teams.count(0), teams.count(1))
        if picks[0] != picks[1]:
            order = (0, 1) if picks[0] < picks[1] else (1, 0)
        elif left(0) and left(1):
            order = (0, 1) if rng.random() < 0.5 else (1, 0)
        else:
            order = (0, 1)  # one team has nothing left: it passes whichever goes first
        for team in order:
            if len(items) < k and left(team):
                items.append(left(team)[0])
                teams.append(team)
    return items, teams


def random_rankings(rng: random.Random) -> tuple[list[int], list[int], int]:
    pool = list(range(12))
    return rng.sample(pool, rng.randint(0, 10)), rng.sample(pool, rng.randint(0, 10)), rng.randint(1, 14)


def test_team_draft_matches_the_round_by_round_reference_and_its_invariants() -> None:
    cases = random.Random(2024)
    for seed in range(400):
        a, b, k = random_rankings(cases)
        got_rng, ref_rng = random.Random(seed), random.Random(seed)
        items, teams = team_draft(a, b, k=k, rng=got_rng)
        assert (items, teams) == rounds_reference(a, b, k=k, rng=ref_rng), (a, b, k, seed)
        assert got_rng.getstate() == ref_rng.getstate()  # the same number of coins drawn
        assert len(items) == len(teams) == min(k, len(set(a) | set(b)))
        assert len(set(items)) == len(items)  # overlapping items never repeated
        for i, (item, team) in enumerate(zip(items, teams, strict=True)):
            ranking = (a, b)[team]
            assert item in ranking  # every item comes from the ranking of the team that picked it ...
            assert item == next(x for x in ranking if x not in items[:i])  # ... and is its best one left
            # While both teams still had something to pick, every round so far gave one item to each.
            if i % 2 == 0 and any(x not in items[:i] for x in a) and any(x not in items[:i] for x in b):
                assert teams[:i].count(0) == teams[:i].count(1)
        assert team_draft(a, b, k=k, rng=random.Random(seed)) == (items, teams)  # a seed replays the answer


def test_team_draft_coin_is_fair() -> None:
    firsts = [team_draft([1, 2], [3, 4], k=2, rng=random.Random(seed))[1][0] for seed in range(4000)]
    assert abs(firsts.count(0) / 4000 - 0.5) < 0.03  # about 4 standard deviations


# -- ratio ---------------------------------------------------------------------------------------------------
def test_ratio_hand_computed() -> None:
    # num = [1, 0, 2], den = [2, 1, 2]: r = 3 / 5 = 0.6, n = 3, dbar = 5 / 3.
    # d = num - r * den = [1 - 1.2, 0 - 0.6, 2 - 1.2] = [-0.2, -0.6, 0.8] (they sum to 0, as they always do)
    # var(d, ddof=1) = (0.04 + 0.36 + 0.64) / 2 = 0.52
    # se = sqrt(0.52 / 3) / (5 / 3) = 0.416333 * 0.6 = 0.249800
    # z * se = 1.959964 * 0.249800 = 0.489599 -> [0.110401, 1.089599]
    got = ratio(np.array([1, 0, 2]), np.array([2, 1, 2]))
    assert got.value == pytest.approx(0.6, abs=1e-15)
    assert got.se == pytest.approx(math.sqrt(0.52 / 3) * 0.6, rel=1e-12)
    assert got.se == pytest.approx(0.249800, abs=1e-6)
    assert (got.low, got.high) == pytest.approx((0.6 - Z95 * got.se, 0.6 + Z95 * got.se), rel=1e-12)
    assert (got.low, got.high) == pytest.approx((0.110401, 1.089599), abs=1e-6)
    assert (got.units, got.numerator, got.denominator) == (3, 3.0, 5.0)
    assert got.to_json() == {
        "value": 0.6,
        "low": 0.110401,
        "high": 1.089599,
        "se": 0.2498,
        "units": 3,
        "numerator": 3.0,
        "denominator": 5.0,
    }


def test_ratio_drops_units_never_shown() -> None:
    # Units 2 and 4 had no impression; unit 4's stray click (a numerator without a denominator) is dropped too.
    got = ratio(np.array([1, 0, 0, 2, 3]), np.array([2, 1, 0, 2, 0]))
    assert got == ratio(np.array([1, 0, 2]), np.array([2, 1, 2]))
    assert (got.units, got.numerator) == (3, 3.0)


def test_ratio_with_no_unit_or_one() -> None:
    assert ratio(np.zeros(0), np.zeros(0)) == Ratio(
        value=0.0, low=0.0, high=0.0, se=0.0, units=0, numerator=0.0, denominator=0.0
    )
    assert ratio(np.array([4.0]), np.array([0.0])).units == 0
    one = ratio(np.array([3]), np.array([4]))
    assert one == Ratio(value=0.75, low=0.75, high=0.75, se=0.0, units=1, numerator=3.0, denominator=4.0)


def test_ratio_is_clustered_by_user() -> None:
    # 10 users, 10 impressions each, 10 clicks in all: r = 0.1. Counted as 100 independent impressions, the
    # binomial se is sqrt(0.1 * 0.9 / 100) = 0.03 whoever clicked.
    den = np.full(10, 10)
    naive = math.sqrt(0.1 * 0.9 / 100)
    # All 10 clicks from one user: d = [10 - 1, 0 - 1 x 9] = [9, -1 x 9], var = (81 + 9) / 9 = 10,
    # se = sqrt(10 / 10) / 10 = 0.1, more than three times the binomial 0.03: one user's taste is one draw.
    one_user = ratio(np.array([10, 0, 0, 0, 0, 0, 0, 0, 0, 0]), den)
    assert one_user.value == pytest.approx(0.1)
    assert one_user.se == pytest.approx(0.1, rel=1e-12)
    assert one_user.se > 3 * naive
    # One click from each user: every d is 0, the users agree exactly, and se = 0 < 0.03.
    spread = ratio(np.ones(10), den)
    assert spread.value == pytest.approx(0.1) and spread.se == pytest.approx(0.0, abs=1e-15)
    # The low bound is clipped at 0, the high one not at 1 (plays per impression may exceed 1).
    assert one_user.low == 0.0 and one_user.high == pytest.approx(0.1 + Z95 * 0.1)
    assert ratio(np.array([30, 1]), np.array([2, 2])).high > 1


def test_ratio_level_is_honoured() -> None:
    num, den = np.array([1, 0, 2]), np.array([2, 1, 2])
    wide, narrow = ratio(num, den), ratio(num, den, level=0.90)
    assert LEVEL == 0.95
    assert narrow.se == wide.se
    assert narrow.high - narrow.value == pytest.approx(Z90 * wide.se, rel=1e-12)
    assert wide.high - wide.value == pytest.approx(Z95 * wide.se, rel=1e-12)


def test_ratio_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="one length"):
        ratio(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="one length"):
        ratio(np.zeros((2, 2)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="non-negative"):
        ratio(np.array([1.0]), np.array([-1.0]))
    with pytest.raises(ValueError, match="finite"):
        ratio(np.array([math.nan]), np.array([1.0]))
    with pytest.raises(ValueError, match="level"):
        ratio(np.ones(2), np.ones(2), level=1.0)


# -- difference ----------------------------------------------------------------------------------------------
def rate(value: float, se: float) -> Ratio:
    return Ratio(value=value, low=value - Z95 * se, high=value + Z95 * se, se=se, units=100, numerator=0.0,
                 denominator=0.0)  # fmt: skip


def test_difference_hand_computed() -> None:
    # b - a = 0.3 - 0.2 = 0.1; se = sqrt(0.03**2 + 0.04**2) = 0.05; |diff| / se = 2
    # p = 2 * (1 - Phi(2)) = 2 * (1 - 0.9772498681) = 0.0455002638 (= erfc(2 / sqrt(2)))
    # interval: 0.1 -+ 1.959964 * 0.05 = [0.002002, 0.197998]
    got = difference(rate(0.2, 0.03), rate(0.3, 0.04))
    assert got.difference == pytest.approx(0.1, abs=1e-15)
    assert got.p_value == pytest.approx(0.0455002638, abs=1e-9)
    assert (got.low, got.high) == pytest.approx((0.1 - Z95 * 0.05, 0.1 + Z95 * 0.05), rel=1e-12)
    assert (got.low, got.high) == pytest.approx((0.002002, 0.197998), abs=1e-6)
    assert got.relative == pytest.approx(0.5)
    assert got.level == 0.95 and got.significant
    assert got.to_json() == {
        "difference": 0.1,
        "low": 0.002002,
        "high": 0.197998,
        "p_value": 0.0455,
        "relative": 0.5,
        "level": 0.95,
        "units": 100,
        "min_units": 20,
        "always_valid_p": 0.480159,
        "significant": True,
        "always_valid_significant": False,
    }
    # Always valid: tau = 0.5 * (0.2 + 0.3) / 2 = 0.125, V = 0.0025, tau^2 = 0.015625, and
    # log Lambda = 0.5 log(0.0025 / 0.018125) + 0.01 * 0.015625 / (2 * 0.0025 * 0.018125) = -0.990501 + 1.724138
    assert got.always_valid_p == pytest.approx(math.exp(-(0.5 * math.log(0.0025 / 0.018125) + 0.000625 / 0.0003625)),
                                               rel=1e-12)  # fmt: skip
    assert got.always_valid_p == pytest.approx(0.480159, abs=1e-6)
    # b behind a: the same p, the interval mirrored
    behind = difference(rate(0.3, 0.04), rate(0.2, 0.03))
    assert behind.p_value == pytest.approx(got.p_value, rel=1e-12)
    assert (behind.low, behind.high) == pytest.approx((-got.high, -got.low), rel=1e-12)
    assert behind.relative == pytest.approx(-1 / 3)


def test_difference_of_ratios_from_users() -> None:
    # a: the hand case above (0.6, se 0.2498); b: three other users, shown as often, each clicking twice as much:
    # every d doubles, so 1.2, se 0.4996.
    a = ratio(np.array([1, 0, 2]), np.array([2, 1, 2]))
    b = ratio(np.array([2, 0, 4]), np.array([2, 1, 2]))
    got = difference(a, b)
    se = math.sqrt(a.se**2 + b.se**2)  # = 0.2498 * sqrt(5) = 0.558570
    assert se == pytest.approx(0.558570, abs=1e-6)
    assert got.difference == pytest.approx(0.6)
    # p = 2 * (1 - Phi(0.6 / 0.558570)) = 2 * (1 - Phi(1.074172)) = erfc(1.074172 / sqrt(2)) = 0.282745
    assert got.p_value == pytest.approx(math.erfc(0.6 / se / math.sqrt(2)), rel=1e-12)
    assert got.p_value == pytest.approx(0.282745, abs=1e-6)
    assert not got.significant


def test_difference_without_spread_and_without_a_baseline() -> None:
    same = difference(rate(0.2, 0.0), rate(0.2, 0.0))
    assert (same.difference, same.low, same.high, same.p_value) == (0.0, 0.0, 0.0, 1.0) and not same.significant
    apart = difference(rate(0.2, 0.0), rate(0.25, 0.0))
    assert apart.p_value == 0.0 and apart.significant
    from_zero = difference(rate(0.0, 0.0), rate(0.1, 0.01))
    assert from_zero.relative is None and from_zero.to_json()["relative"] is None


def test_a_difference_of_a_few_users_is_never_significant() -> None:
    """One user a side (or every user alike) has se 0: the p-value is 0, yet nothing is known (bench.online saw
    A/B tests called after their first user)."""
    one = ratio(np.array([0.0]), np.array([5.0])), ratio(np.array([2.0]), np.array([5.0]))
    got = difference(*one)
    assert got.p_value == 0.0 and got.units == 1 and not got.significant
    alike = ratio(np.zeros(19), np.full(19, 5.0)), ratio(np.full(19, 2.0), np.full(19, 5.0))
    assert not difference(*alike).significant  # 19 a side: one short
    enough = ratio(np.zeros(20), np.full(20, 5.0)), ratio(np.full(20, 2.0), np.full(20, 5.0))
    assert difference(*enough).significant and not difference(*enough, min_units=21).significant


def test_difference_level_is_honoured() -> None:
    got = difference(rate(0.2, 0.03), rate(0.3, 0.04), level=0.99)
    assert got.p_value == pytest.approx(0.0455002638, abs=1e-9)  # the p-value does not depend on the level ...
    assert got.level == 0.99 and not got.significant  # ... whether it counts does: 0.0455 > 0.01
    assert got.low < 0 < got.high
    assert Difference(difference=0.1, low=0.0, high=0.2, p_value=0.08, relative=None, level=0.9).significant
    with pytest.raises(ValueError, match="level"):
        difference(rate(0.2, 0.03), rate(0.3, 0.04), level=0.0)


# -- preference ----------------------------------------------------------------------------------------------
def test_preference_hand_computed() -> None:
    # unit:      0  1  2  3  4  5
    # credit a:  0  2  1  0  1  3
    # credit b:  1  1  1  0  0  0
    #            b  a  =  -  a  a    (- : no click, not counted)
    # wins_a = 3, wins_b = 1, ties = 1; preference = (1 - 3) / 5 = -0.4 (a preferred)
    # sign test of 1 win of 4: P(X <= 1) + P(X >= 3) = (1 + 4 + 4 + 1) / 16 = 0.625
    got = preference(np.array([0, 2, 1, 0, 1, 3]), np.array([1, 1, 1, 0, 0, 0]))
    assert got == Preference(wins_a=3, wins_b=1, ties=1, preference=-0.4, p_value=0.625, level=0.95,
                             always_valid_p=1.0)  # fmt: skip
    assert not got.significant
    assert got.to_json() == {
        "wins_a": 3,
        "wins_b": 1,
        "ties": 1,
        "preference": -0.4,
        "p_value": 0.625,
        "level": 0.95,
        "always_valid_p": 1.0,  # Lambda = 2^4 3! 1! / 5! = 0.8 < 1
        "significant": False,
        "always_valid_significant": False,
    }


def test_preference_nine_wins_of_ten() -> None:
    # p = 2 * P(X >= 9 | n = 10, 1/2) = 2 * (10 + 1) / 1024 = 0.021484375; two ties and a silent user besides.
    credit_a = np.array([0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 1, 2, 0])
    credit_b = np.array([1, 2, 1, 1, 4, 1, 1, 1, 2, 0, 1, 2, 0])
    got = preference(credit_a, credit_b)
    assert (got.wins_a, got.wins_b, got.ties) == (1, 9, 2)
    assert got.preference == pytest.approx(8 / 12)
    assert got.p_value == pytest.approx(0.021484375, abs=1e-15)
    assert got.significant
    # The level is honoured: the same wins do not count at 99 %.
    strict = preference(credit_a, credit_b, level=0.99)
    assert strict.p_value == got.p_value and strict.level == 0.99 and not strict.significant


def test_preference_with_no_clicks() -> None:
    nothing = Preference(wins_a=0, wins_b=0, ties=0, preference=0.0, p_value=1.0, level=0.95)
    assert preference(np.zeros(4), np.zeros(4)) == nothing
    assert preference(np.zeros(0), np.zeros(0)) == nothing
    only_ties = preference(np.array([1, 2]), np.array([1, 2]))
    assert (only_ties.ties, only_ties.preference, only_ties.p_value) == (2, 0.0, 1.0)


def test_preference_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="one length"):
        preference(np.zeros(3), np.zeros(2))
    with pytest.raises(ValueError, match="non-negative"):
        preference(np.array([-1]), np.array([0]))
    with pytest.raises(ValueError, match="level"):
        preference(np.zeros(1), np.zeros(1), level=95)


# -- always-valid p-values -----------------------------------------------------------------------------------
def test_the_sign_mixture_hand_computed() -> None:
    # Lambda = 2^n a! b! / (n + 1)!: 9 wins of 10, 1024 * 9! / 11! = 1024 / 110 (p 0.107, though the fixed-sample
    # test says 0.021); 10 of 10, 1024 / 11 (p 0.0107); none yet, Lambda = 1.
    assert sign_mixture_p(1, 9) == pytest.approx(110 / 1024, rel=1e-12) == sign_mixture_p(9, 1)
    assert sign_mixture_p(0, 10) == pytest.approx(11 / 1024, rel=1e-12)
    assert sign_mixture_p(0, 0) == 1.0 and sign_mixture_p(5, 5) == 1.0


def test_the_normal_mixture_edges() -> None:
    assert mixture_p(0.1, 0.0, tau=0.05) == 0.0 and mixture_p(0.0, 0.0, tau=0.05) == 1.0  # as difference's p
    assert mixture_p(0.1, 0.05, tau=0.0) == 1.0
    assert mixture_p(0.0, 0.05, tau=0.05) == 1.0  # Lambda = sqrt(1/2) < 1
    assert mixture_p(0.5, 0.05, tau=0.05) < 1e-6  # ten standard errors


def test_the_always_valid_p_values_hold_however_often_they_are_read() -> None:
    # 2,000 experiments with no difference, read after every unit up to 400: the always-valid tests call at most
    # about 5 % of them significant at some read; the fixed-sample p read the same way calls far more.
    rng = np.random.default_rng(3)
    runs, n = 2000, 400
    # The sign test: each deciding user a coin flip.
    wins_b = np.cumsum(rng.integers(0, 2, size=(runs, n)), axis=1)
    decided = np.arange(1, n + 1)
    anytime = [any(sign_mixture_p(int(d - w), int(w)) < 0.05 for w, d in zip(row, decided, strict=True))
               for row in wins_b]  # fmt: skip
    assert np.mean(anytime) <= 0.06
    # The normal mixture: a mean of unit-variance draws, read after each, se = 1 / sqrt(n).
    draws = np.cumsum(rng.standard_normal((runs, n)), axis=1) / decided
    se = 1 / np.sqrt(decided)
    normal = [any(mixture_p(float(m), float(e), tau=0.2) < 0.05 for m, e in zip(row, se, strict=True))
              for row in draws]  # fmt: skip
    fixed = (np.abs(draws / se) > Z95).any(axis=1)
    assert np.mean(normal) <= 0.06 and np.mean(fixed) > 0.2
