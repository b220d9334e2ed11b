"""What users did with what we served (issue #27): answers stamped with a recommendation id, experiments that pick
a user's model, events credited to the answer that caused them, and each experiment's online metrics.

    a recommendation (api/recommendations.py) ──> assignment(running experiment, user) ──> params: the variant's
        model (an A/B test) or both models (an interleaving), and the experiment's number and variant
    the worker (shared/logic/serving.py answer_query) ──> interleaved(answer a, answer b) when asked (team draft)
        └─ stamped(svc, answer, params) ──> "recommendation_id": the answer signed (shared/ml/attribution.py),
           and "experiment": {name, variant} where one chose the model
    POST /v1/events, a feedback rating citing an answer ──> attribute(svc, events): each checked, its answer read
        back from the id it cites ──> record(svc, attributed): one pipeline: the log (shared/store/events.py) and
        each credited event's counters (shared/store/experiments.py): in all, per user, per time bucket
    GET /v1/experiments/<name>, the dashboard, /metrics ──> report(svc, record): the counters through
        shared/ml/online.py: per variant CTR@k, plays and liked per impression with intervals clustered by user,
        each variant against the first, and an interleaving's preference with its sign test

An event is *credited* when it cites an answer made under an experiment that still exists, within
``MOVIEREC_ATTRIBUTION_WINDOW_S`` of it; every valid event is logged. A click or a play needs no impression
before it (clients may send only clicks), but the rates divide by the impressions posted.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from shared.errors import Conflict
from shared.ml.attribution import INTERLEAVED, BadId, Served, movie_hash, sign, verify
from shared.ml.online import (
    LEVEL,
    Preference,
    Ratio,
    difference,
    preference,
    ratio,
    team_draft,
    variant_of,
)
from shared.ml.pages import next_cursor
from shared.store.experiments import ENDED, PAUSED, RUNNING, Record

if TYPE_CHECKING:
    from shared.logic.services import Services

AB, INTERLEAVE = "ab", "interleave"
KINDS = (AB, INTERLEAVE)
EVENT_TYPES = ("impression", "click", "play", "rating")
LIKED_AT = 4.0
"""A rating this high or higher of a shown movie is the experiments' "liked" (on MovieLens's 0.5-5 scale)."""
DEFAULT_K = 10
"""CTR@k's k: impressions and clicks at positions past it are counted in all, not in the rate."""
DEFAULT_BUCKET_S = 60
"""An experiment's time series has a point per this many seconds."""


def new_record(
    name: str, kind: str, variants: Sequence[dict[str, Any]], *, dataset: str, k: int = DEFAULT_K,
    bucket_s: int = DEFAULT_BUCKET_S, seed: int | None = None, now: float | None = None,
) -> Record:  # fmt: skip
    """An experiment's record before it is stored: its variants named (A, B, ... when not), shares normalised, a
    salt of its own (so a user's bucket in one experiment says nothing of their bucket in the next; made from
    ``seed`` when one is given, so a replay buckets and interleaves alike), the one dataset of its models."""
    total = sum(float(v.get("share", 1.0)) for v in variants)
    named = [
        {"name": v.get("name") or chr(ord("A") + i), "model": v["model"], "share": float(v.get("share", 1.0)) / total}
        for i, v in enumerate(variants)
    ]
    return {
        "name": name,
        "kind": kind,
        "unit": "user",
        "variants": named,
        "k": k,
        "bucket_s": bucket_s,
        "salt": (
            hashlib.sha256(f"movierec experiment {seed}".encode()).digest()[:16] if seed is not None else os.urandom(16)
        ).hex(),
        "dataset": dataset,
        "created": iso(now),
    }


def assignment(record: Record, user_id: int) -> dict[str, Any]:
    """The params that make a user's answer the experiment's: the model of the user's variant (a keyed hash of
    their id: the same variant in every process, after every restart) or, interleaving, both models."""
    tag = {"number": int(record["number"]), "name": record["name"]}
    variants = record["variants"]
    if record["kind"] == INTERLEAVE:
        # The draft's coins: the user's own (keyed by the salt), so the same user's same page interleaves alike
        coin = hmac.new(bytes.fromhex(record["salt"]), f"coin {user_id}".encode(), hashlib.sha256).hexdigest()[:16]
        return {"model": variants[0]["model"], "interleave": [v["model"] for v in variants],
                "experiment": {**tag, "variant": INTERLEAVED, "coin": coin}}  # fmt: skip
    v = variant_of(bytes.fromhex(record["salt"]), user_id, [float(x["share"]) for x in variants])
    return {"model": variants[v]["model"], "experiment": {**tag, "variant": v, "variant_name": variants[v]["name"]}}


def interleaved(
    first: dict[str, Any], second: dict[str, Any], params: dict[str, Any], *, rng: random.Random | None = None
) -> tuple[dict[str, Any], list[int]]:
    """Two models' answers to one query as one (team-draft interleaving), and each item's team (0: the first's).
    The items keep the scores their own model gave; the cursor covers the merged items."""
    k = int(params["k"])
    by_team = [{item["movie_id"]: item for item in answer["items"]} for answer in (first, second)]
    if rng is None:  # the user's coins, on this page (an answer a user asks again is drafted alike)
        coin = (params.get("experiment") or {}).get("coin")
        rng = random.Random(f"{coin}:{len(params.get('shown', []))}") if coin else random.Random()
    ids, teams = team_draft([i["movie_id"] for i in first["items"]], [i["movie_id"] for i in second["items"]], k=k,
                            rng=rng)  # fmt: skip
    merged = {**first, "items": [by_team[team][m] for m, team in zip(ids, teams, strict=True)]}
    merged["explanation"] = "; ".join(filter(None, [
        f"interleaved: the items of models {first['model']} and {second['model']} drafted in turns (team-draft "
        "interleaving), each keeping its own model's score", first.get("explanation")]))  # fmt: skip
    if "shown" in params:
        merged["next_cursor"] = next_cursor(params["shown"], ids)
    return merged, teams


def stamped(svc: Services, answer: dict[str, Any], params: dict[str, Any], teams: Sequence[int] = ()) -> dict[str, Any]:
    """``answer`` with its ``recommendation_id`` and, where an experiment chose its model, ``experiment``."""
    experiment = params.get("experiment") or {}
    user_id = params.get("user_id")
    served = Served.of(
        [item["movie_id"] for item in answer["items"]],
        at=int(time.time()),
        user_id=int(user_id) if user_id is not None else 0,
        experiment=int(experiment.get("number", 0)),
        variant=int(experiment.get("variant", 0)),
        teams=teams,
    )
    answer["recommendation_id"] = sign(svc.events.secret(), served)
    if experiment:
        variant = "interleaved" if experiment["variant"] == INTERLEAVED else experiment["variant_name"]
        answer["experiment"] = {"name": experiment["name"], "variant": variant}
    return answer


def batch_ids(secret: bytes, user_ids: np.ndarray, movie_ids: np.ndarray, *, at: int) -> list[str]:
    """The recommendation id of each user's rows of a batch (``user_ids`` in blocks, as the rows come): one id a
    user, repeated on each of their rows."""
    out: list[str] = []
    if not len(user_ids):
        return out
    starts = np.flatnonzero(np.r_[True, user_ids[1:] != user_ids[:-1]])
    ends = [*starts[1:].tolist(), len(user_ids)]
    for lo, hi in zip(starts.tolist(), ends, strict=True):
        rid = sign(secret, Served.of(movie_ids[lo:hi].tolist(), at=at, user_id=int(user_ids[lo])))
        out.extend([rid] * (hi - lo))
    return out


# -- events -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Attributed:
    """A valid event as logged, and the counters it adds to (when credited)."""

    event: dict[str, Any]
    experiment: Record | None = None  # the experiment whose counters it adds to; None: logged only


@dataclass(frozen=True)
class _Checks:
    """What a batch's events are checked against."""

    secret: bytes  # the tenant's attribution secret
    movie_ids: frozenset[int]  # the active model's catalogue
    scale: tuple[float, float]  # its dataset's lowest and highest rating
    now_s: int
    window_s: int  # MOVIEREC_ATTRIBUTION_WINDOW_S
    experiments: dict[int, Record]  # the tenant's experiments by number
    catalogue: Callable[[str], frozenset[int]]  # a dataset's movie ids
    seen: dict[str, Served] = field(default_factory=dict)  # the ids verified so far
    catalogues: dict[int, tuple[frozenset[int], str]] = field(default_factory=dict)  # ``movies`` by experiment

    def movies(self, served: Served | None) -> tuple[frozenset[int], str]:
        """The catalogue an event's movie must be in: the dataset of the experiment whose answer it cites (its
        variants' one dataset), else the active model's; and its name in a refusal (once per experiment a
        batch)."""
        number = served.experiment if served is not None else 0
        found = self.catalogues.get(number)
        if found is None:
            record = self.experiments.get(number) if number else None
            if record is not None and record.get("dataset"):
                found = self.catalogue(record["dataset"]), f"experiment {record['name']!r}'s catalogue"
            else:
                found = self.movie_ids, "the active model's catalogue"
            self.catalogues[number] = found
        return found


PAUSE_EVERY = 100
"""Events handled between two calls of a ``pause`` (loading, checking, encoding: about half a millisecond of work
each): a request that lands on the API worker beside a batch waits that long, not for the batch. Pausing every
25 events took more CPU and did not lower a recommendation's p99 beside 5,000 events a second (BENCHMARKS.md)."""


def attribute(
    svc: Services, events: list[dict[str, Any]], *, movie_ids: frozenset[int], scale: tuple[float, float],
    now: float | None = None, pause: Callable[[], None] = lambda: None,
) -> tuple[list[Attributed], list[dict[str, Any]]]:  # fmt: skip
    """Each event checked (its movie known, a rating on the scale, the answer it cites signed by this tenant, for
    its user, showing its movie) and credited; and the problems, one per bad event (``row``, ``problem``).
    ``pause`` is called every ``PAUSE_EVERY`` events: the API's gevent worker lets its other requests run there,
    so a batch of a thousand events does not hold a recommendation up for its whole check."""
    cites = any("recommendation_id" in event for event in events)
    checks = _Checks(
        svc.events.secret(), movie_ids, scale, int(now if now is not None else time.time()),
        svc.settings.attribution_window_s, {int(r["number"]): r for r in svc.experiments.all()} if cites else {},
        svc.catalogue.movie_ids,
    )  # fmt: skip
    out: list[Attributed] = []
    problems: list[dict[str, Any]] = []
    for row, event in enumerate(events):
        if row and not row % PAUSE_EVERY:
            pause()
        try:
            logged, number = _attribute_one(event, checks)
        except _Refused as err:
            problems.append({"row": row, "problem": str(err)})
            continue
        credited = checks.experiments.get(number) if number else None
        if number and credited is None:
            logged["credited"] = "no such experiment"
        out.append(Attributed(logged, credited))
    return out, problems


class _Refused(ValueError):
    """An event that cannot be stored, and why."""


def _attribute_one(event: dict[str, Any], checks: _Checks) -> tuple[dict[str, Any], int]:
    """The event as logged and the experiment it is credited to (0: none); _Refused for a bad one."""
    movie = int(event["movie_id"])
    served, position = _cited(event, movie, checks) if event.get("recommendation_id") is not None else (None, 0)
    movies, which = checks.movies(served)
    if movie not in movies:
        raise _Refused(f"movie {movie} is not in {which}")
    rating = event.get("rating")
    if (rating is None) != (event["type"] != "rating"):
        raise _Refused("a rating event has a rating, and only a rating event has one")
    low, high = checks.scale
    if rating is not None and not low <= float(rating) <= high:
        raise _Refused(f"rating {rating:g} is off the dataset's scale ({low:g} to {high:g})")
    logged = {**event, "timestamp": int(event.get("timestamp", checks.now_s))}
    if served is None:
        return logged, 0
    logged["position"] = position
    if not served.experiment:
        return logged, 0
    logged["experiment"], logged["variant"] = served.experiment, served.variant
    if served.variant == INTERLEAVED:
        logged["team"] = served.team(logged["position"])
    age = logged["timestamp"] - served.at
    if not -60 <= age <= checks.window_s:  # a minute of clock skew between the API and the worker that made the id
        logged["credited"] = "outside the attribution window"
        return logged, 0
    logged["answered_at"] = served.at
    return logged, served.experiment


def _cited(event: dict[str, Any], movie: int, checks: _Checks) -> tuple[Served, int]:
    """The answer an event cites, checked: made by this tenant, for the event's user, showing its movie (at its
    position, when it names one); and that position."""
    rid = event["recommendation_id"]
    served = checks.seen.get(rid)  # a batch cites each answer once an item: its impressions, its clicks
    if served is None:
        try:
            served = checks.seen[rid] = verify(checks.secret, rid)
        except BadId as err:
            raise _Refused(f"recommendation_id: {err}") from None
    if served.user_id and served.user_id != int(event["user_id"]):
        raise _Refused(f"the answer it cites was made for user {served.user_id}, not {event['user_id']}")
    position = event.get("position")
    if position is not None:
        if not (position <= len(served.hashes) and served.hashes[position - 1] == movie_hash(movie)):
            raise _Refused(f"the answer it cites did not show movie {movie} at position {position}")
        return served, int(position)
    found = served.position(movie)
    if found is None:
        raise _Refused(f"the answer it cites did not show movie {movie}")
    return served, found


_COMPACT = json.JSONEncoder(separators=(",", ":")).encode
"""An event's log text (json.dumps with separators would build an encoder a call: a third of the time)."""


class KeyReused(Conflict):
    """An ``Idempotency-Key`` already stored a different batch (409)."""

    code = "idempotency_key_reused"


def record(
    svc: Services, attributed: list[Attributed], *, now: float | None = None, pause: Callable[[], None] = lambda: None,
    once: tuple[str, bytes] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Log every event and add the credited ones to their experiments' counters (the records ``attribute`` read),
    in one round trip; a summary. ``pause``: as ``attribute``'s, between slices of the events' encoding.

    ``once``: the batch's ``Idempotency-Key`` and its body. The first request with a key stores the batch and
    keeps, for a day, its token, the body's digest and the summary under the key's digest; a later one with that
    key stores nothing and answers that summary (``replayed``), or raises ``KeyReused`` for another body. The
    check and the log are one Redis command, so two retries at once store the batch once."""
    now_s = now if now is not None else time.time()
    by_experiment: dict[int, list[dict[str, Any]]] = {}
    records: dict[int, Record] = {}
    for a in attributed:
        if a.experiment is not None:
            number = int(a.experiment["number"])
            records[number] = a.experiment
            by_experiment.setdefault(number, []).append(a.event)
    texts = []
    for lo in range(0, len(attributed), PAUSE_EVERY):
        if lo:
            pause()
        texts += [_COMPACT(a.event) for a in attributed[lo : lo + PAUSE_EVERY]]
    summary = {"accepted": len(attributed), "credited": sum(len(e) for e in by_experiment.values()),
               "experiments": sorted(records[n]["name"] for n in by_experiment)}  # fmt: skip
    held_key = token = body_digest = None
    if once is not None:
        held_key = svc.events.once_key(once[0])
        token, body_digest = os.urandom(16).hex(), hashlib.sha256(once[1]).hexdigest()[:32]
    pipe = svc.redis.pipeline(transaction=False)
    svc.events.add(pipe, texts, now_ms=int(now_s * 1000),
                   once=(held_key, f"{token}{body_digest}{json.dumps(summary)}") if held_key else None)  # fmt: skip
    for number, events in by_experiment.items():
        svc.experiments.count(pipe, number, *increments(records[number], events, now=now_s),
                              once=(held_key, str(token)) if held_key else None)  # fmt: skip
    held = pipe.execute()[0]
    if not isinstance(held, bytes):  # this request stored the batch
        return {**summary, "replayed": False}
    text = held.decode()
    if text[32:64] != body_digest:
        raise KeyReused("this Idempotency-Key was sent with another batch of events within the last day")
    return {**json.loads(text[64:]), "replayed": True}


def increments(
    record: Record, events: list[dict[str, Any]], *, now: float
) -> tuple[Counter[str], Counter[str], Counter[str]]:
    """The counters credited events add to (totals, per user, per time bucket): per variant ``v`` (``x`` an
    interleaving's), each type's count, impressions and clicks at positions <= k, and liked (a rating of
    ``LIKED_AT`` or more); per user, the same of positions <= k, and an interleaving's clicks by team."""
    totals: Counter[str] = Counter()
    users: Counter[str] = Counter()
    series: Counter[str] = Counter()
    k, bucket = int(record["k"]), int(now // int(record["bucket_s"])) * int(record["bucket_s"])
    for e in events:
        v = "x" if e["variant"] == INTERLEAVED else str(e["variant"])
        u, kind = e["user_id"], e["type"]
        totals[f"{v}:{kind}s"] += 1
        at_k = int(e["position"]) <= k
        if kind == "impression" and at_k:
            totals[f"{v}:impressions@k"] += 1
            users[f"{u}:{v}:i"] += 1
            series[f"{bucket}:{v}:i"] += 1
        elif kind == "click" and at_k:
            totals[f"{v}:clicks@k"] += 1
            users[f"{u}:{v}:c"] += 1
            series[f"{bucket}:{v}:c"] += 1
            if e.get("team") is not None:
                totals[f"t{e['team']}:clicks@k"] += 1
                users[f"{u}:t{e['team']}"] += 1
                series[f"{bucket}:t{e['team']}"] += 1
        elif kind == "play":
            users[f"{u}:{v}:p"] += 1
        elif kind == "rating" and float(e["rating"]) >= LIKED_AT:
            totals[f"{v}:liked"] += 1
            users[f"{u}:{v}:l"] += 1
    return totals, users, series


# -- metrics -------------------------------------------------------------------------------------------------
def report(svc: Services, record: Record) -> dict[str, Any]:
    """An experiment's record and its online metrics (GET /v1/experiments/<name>)."""
    totals, users, series = svc.experiments.counts(int(record["number"]))
    variants = record["variants"]
    keys = ["x"] if record["kind"] == INTERLEAVE else [str(i) for i in range(len(variants))]
    by_user = per_user(users)
    rows = []
    for key in keys:
        arrays = by_user.get(key, {})
        none = np.zeros(len(arrays.get("_users", ())))
        impressions = arrays.get("i", none)
        rates = {name: ratio(arrays.get(m, none), impressions)
                 for name, m in (("ctr", "c"), ("plays_rate", "p"), ("liked_rate", "l"))}  # fmt: skip
        rows.append((key, {
            "users": len(impressions),
            **{kind: totals.get(f"{key}:{kind}", 0) for kind in
               ("impressions", "clicks", "plays", "ratings", "impressions@k", "clicks@k", "liked")},
        }, rates))  # fmt: skip
    out: dict[str, Any] = {**{k: v for k, v in record.items() if k != "salt"}, "level": LEVEL}
    if record["kind"] == INTERLEAVE:
        out["totals"] = {**rows[0][1], **{n: r.to_json() for n, r in rows[0][2].items()}}
        credit = [by_user.get(f"t{t}", {}).get("", np.zeros(0)) for t in (0, 1)]
        pref = preference(*aligned(by_user, "t0", "t1"))
        out["interleaving"] = {
            **pref.to_json(),
            "clicks": {variants[t]["name"]: int(credit[t].sum()) for t in (0, 1)},
            "preferred": _preferred(variants, pref),
        }
    else:
        control = rows[0][2]
        out["variants"] = [
            {**variants[i], **counts, **{n: r.to_json() for n, r in rates.items()},
             **({"vs_control": {"variant": variants[0]["name"], **{n: difference(control[n], rates[n]).to_json()
                                                                    for n in ("ctr", "liked_rate")}}} if i else {})}
            for i, (_, counts, rates) in enumerate(rows)
        ]  # fmt: skip
        out["leader"] = _leader(variants, [rates["ctr"] for _, _, rates in rows])
    out["series"] = _series(series, record, keys)
    return out


def per_user(users: dict[str, int]) -> dict[str, dict[str, np.ndarray]]:
    """``{u}:{v}:{m}`` and ``{u}:t{team}`` counters as aligned per-user arrays: variant -> metric -> (users,), every
    metric of a variant over the same users (those with any of its counters), in one order."""
    by: dict[str, dict[int, dict[str, int]]] = {}
    for field_name, count in users.items():
        parts = field_name.split(":")
        u, v, m = (int(parts[0]), parts[1], parts[2]) if len(parts) == 3 else (int(parts[0]), parts[1], "")
        by.setdefault(v, {}).setdefault(u, {})[m] = count
    out: dict[str, dict[str, np.ndarray]] = {}
    for v, per in by.items():
        order = sorted(per)
        metrics = {m for counts in per.values() for m in counts}
        out[v] = {m: np.array([per[u].get(m, 0) for u in order], dtype=np.float64) for m in metrics}
        out[v]["_users"] = np.array(order, dtype=np.int64)
    return out


def aligned(
    by_user: dict[str, dict[str, np.ndarray]], a: str, b: str, *, users: Sequence[int] | None = None
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Two teams' per-user credits over the union of their users, or over ``users`` when given (a user a team did
    not credit has 0 for it)."""
    ua, ub = ({int(u): c for u, c in zip(by_user.get(t, {}).get("_users", ()), by_user.get(t, {}).get("", ()),
                                         strict=True)} for t in (a, b))  # fmt: skip
    over = sorted(set(ua) | set(ub)) if users is None else users
    return (np.array([ua.get(u, 0) for u in over], dtype=np.float64),
            np.array([ub.get(u, 0) for u in over], dtype=np.float64))  # fmt: skip


def _leader(variants: list[dict[str, Any]], ctrs: list[Ratio]) -> dict[str, Any]:
    """The variant with the highest CTR@k, and whether its lead over the first variant is significant (for the
    first itself: whether it beats every other significantly), by the fixed-sample test and the always-valid one."""
    best = max(range(len(ctrs)), key=lambda i: ctrs[i].value)
    against = [difference(ctrs[0], ctrs[best])] if best else [difference(ctrs[0], c) for c in ctrs[1:]]
    return {"variant": variants[best]["name"], "model": variants[best]["model"],
            "significant": bool(against) and all(d.significant for d in against),
            "always_valid_significant": bool(against) and all(d.always_valid_significant for d in against)}  # fmt: skip


def _preferred(variants: list[dict[str, Any]], pref: Preference) -> dict[str, Any] | None:
    if pref.preference == 0:
        return None
    chosen = variants[1] if pref.preference > 0 else variants[0]
    return {"variant": chosen["name"], "model": chosen["model"], "significant": pref.significant,
            "always_valid_significant": pref.always_valid_significant}  # fmt: skip


def winner(report_: dict[str, Any]) -> dict[str, Any] | None:
    """The variant an experiment's report says won (its leader, or an interleaving's preferred), by the always-valid
    test: ``promote`` asks whenever someone looks, and a fixed-sample p-value read at every look calls a tie
    significant far more often than it says (shared/ml/online.py)."""
    found = report_.get("interleaving", {}).get("preferred") if report_["kind"] == INTERLEAVE else report_["leader"]
    return cast("dict[str, Any] | None", found) if found and found["always_valid_significant"] else None


def _series(series: dict[str, int], record: Record, keys: list[str]) -> dict[str, Any]:
    """Points in time order: each bucket's start and, per variant (per team in an interleaving), the cumulative
    impressions and clicks up to it (cumulative: a rate over a minute of a quiet experiment is noise)."""
    buckets = sorted({int(f.split(":", 1)[0]) for f in series})
    names = [v["name"] for v in record["variants"]]
    running: Counter[str] = Counter()
    points = []
    for b in buckets:
        point: dict[str, Any] = {"t": iso(b)}
        if record["kind"] == INTERLEAVE:
            for t in (0, 1):
                running[f"t{t}"] += series.get(f"{b}:t{t}", 0)
            running["i"] += series.get(f"{b}:x:i", 0)
            point["impressions"] = running["i"]
            point["clicks"] = {names[t]: running[f"t{t}"] for t in (0, 1)}
        else:
            for key, name in zip(keys, names, strict=True):
                running[f"{key}:i"] += series.get(f"{b}:{key}:i", 0)
                running[f"{key}:c"] += series.get(f"{b}:{key}:c", 0)
                point[name] = {"impressions": running[f"{key}:i"], "clicks": running[f"{key}:c"]}
        points.append(point)
    return {"bucket_s": int(record["bucket_s"]), "cumulative": True, "points": points}


def iso(t: float | None = None) -> str:
    """``t`` (now when None) as an experiment's records and series write times: ISO 8601 UTC, to the second."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


STATE_MOVES = {"pause": (RUNNING, PAUSED, "paused"), "resume": (PAUSED, RUNNING, "started"),
               "end": (None, ENDED, "ended")}  # fmt: skip
"""POST /v1/experiments/<name>/<action>: the state it needs (None: any but ended), the one it leaves, and the
record's field that says when."""
