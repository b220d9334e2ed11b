"""Feedback: ratings given after ingest, kept beside their dataset, read by serving, folded into new versions.

    POST /v1/datasets/<id>/ratings ──> validated in full (movies, scale, size) ──> FeedbackStore.add: one Lua
        script that checks the caps and stores, so a batch is stored whole or not at all (nothing when it would
        pass a cap), and durable once the API answers
    recommendation for a user ──> FeedbackStore.user (one HGETALL) ──> over the stored ratings ──> profile
    pipeline / evaluation over a dataset ──> a feedback version (shared/logic/feedback.py): the dataset with
        its feedback, a dataset of its own named by its content (``version_id``: ds-<hash(base, feedback)>)

Feedback belongs to a *base* dataset, the one it was posted to; posting to a feedback version posts to its
base. Keys (``shared/infra/keys.py``):

    <prefix>:feedback:<ds>:user:<uid>   hash: movie id -> "rating,timestamp" (HSET: the last rating wins)
    <prefix>:feedback:<ds>:users        sorted set: user id -> the time of their last feedback
    <prefix>:feedback:<ds>:rows         string: how many (user, movie) rows the user hashes hold in all

Caps (``FeedbackCaps``: MOVIEREC_MAX_FEEDBACK_ROWS a dataset, MOVIEREC_MAX_FEEDBACK_ROWS_PER_USER a user) count
rows after the batch: a rating of a (user, movie) already stored replaces it and adds no row. The row count is
kept by the script that stores; a dataset whose feedback predates it is counted once, on its next batch.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import redis

from shared.errors import QuotaExceeded
from shared.infra.keys import Keys
from shared.infra.redisconn import Script
from shared.store.artifacts import delete_matching

MAX_BATCH = 10_000
"""Ratings one POST may carry."""
HSET_PAIRS = 1000
"""Fields one HSET of the store script sets (Lua's unpack takes a few thousand values at most)."""
MAX_SCALE_VALUES = 20
"""A dataset with at most this many distinct rating values takes only those (MovieLens: 0.5, 1.0 ... 5.0)."""


@dataclass(frozen=True)
class Feedback:
    """Ratings given after ingest, as arrays: one row per (user, movie), users ascending, then by time."""

    user_ids: np.ndarray  # (f,) int64
    movie_ids: np.ndarray  # (f,) int64
    values: np.ndarray  # (f,) float32
    times: np.ndarray  # (f,) int64 seconds

    def __len__(self) -> int:
        return len(self.user_ids)

    @classmethod
    def of(cls, rows: list[tuple[int, int, float, int]]) -> Feedback:
        rows = sorted(rows, key=lambda r: (r[0], r[3], r[1]))  # user, time, movie
        array = np.asarray(rows, dtype=np.float64).reshape(-1, 4)
        return cls(
            user_ids=array[:, 0].astype(np.int64),
            movie_ids=array[:, 1].astype(np.int64),
            values=array[:, 2].astype(np.float32),
            times=array[:, 3].astype(np.int64),
        )

    def digest(self) -> str:
        h = hashlib.blake2b(digest_size=16)
        for a in (self.user_ids, self.movie_ids, self.values, self.times):
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()


def base_of(record: dict[str, Any]) -> str:
    """The dataset whose feedback a dataset reads: itself, or the base of a feedback version."""
    derived = record.get("derived") or {}
    return str(derived["from"]) if "feedback" in derived else str(record["id"])


def rating_scale(values: np.ndarray) -> tuple[float, float, list[float] | None]:
    """(lowest, highest, the allowed values or None for any in range) of a dataset's stored ratings."""
    if not len(values):
        return 0.0, 0.0, []
    distinct = np.unique(values)
    allowed = [float(v) for v in distinct] if len(distinct) <= MAX_SCALE_VALUES else None
    return float(distinct[0]), float(distinct[-1]), allowed


MAX_PROBLEMS = 20
"""Bad rows a refusal names (it counts them all)."""


def problems(
    rows: list[dict[str, Any]], known_movies: frozenset[int], scale: tuple[float, float, list[float] | None]
) -> list[dict[str, Any]]:
    """Every row of a feedback batch that cannot be stored, as {"row", "movie_id", "problem"}: a movie not in
    the dataset's catalogue, a rating off its scale (one of its values when it has few, else in its range)."""
    lo, hi, allowed = scale
    found = []
    for i, row in enumerate(rows):
        rating = float(row["rating"])
        if int(row["movie_id"]) not in known_movies:
            found.append({"row": i, "movie_id": row["movie_id"], "problem": "unknown movie id in this dataset"})
        elif allowed is not None and rating not in allowed:
            found.append({"row": i, "movie_id": row["movie_id"], "problem": f"rating {rating} is not one of {allowed}"})
        elif allowed is None and not lo <= rating <= hi:
            found.append({"row": i, "movie_id": row["movie_id"], "problem": f"rating {rating} is outside {lo}..{hi}"})
    return found


_ADD = """
local max_rows, max_user = tonumber(ARGV[1]), tonumber(ARGV[2])
local plan, new_total, a = {}, 0, 3
for u = 3, #KEYS do
  local uid, ts, n = ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2])
  a = a + 3
  local new = 0
  for i = 0, n - 1 do
    new = new + (1 - redis.call('HEXISTS', KEYS[u], ARGV[a + 2 * i]))
  end
  local have = redis.call('HLEN', KEYS[u])
  if max_user > 0 and have + new > max_user then return {'user', uid, have, new} end
  plan[u] = {a, n, uid, ts}
  new_total = new_total + new
  a = a + 2 * n
end
local stored = tonumber(redis.call('GET', KEYS[2]) or '0')
if max_rows > 0 and stored + new_total > max_rows then return {'dataset', '', stored, new_total} end
for u = 3, #KEYS do
  local start, n, uid, ts = unpack(plan[u])
  for i = 0, n - 1, HSET_PAIRS do
    local args = {}
    for j = i, math.min(n, i + HSET_PAIRS) - 1 do
      args[#args + 1] = ARGV[start + 2 * j]
      args[#args + 1] = ARGV[start + 2 * j + 1]
    end
    redis.call('HSET', KEYS[u], unpack(args))
  end
  redis.call('ZADD', KEYS[1], 'GT', ts, uid)
end
redis.call('INCRBY', KEYS[2], new_total)
return {'ok', '', stored, new_total}
""".replace("HSET_PAIRS", str(HSET_PAIRS))
"""KEYS: the users set, the row count, then each user's hash. ARGV: the dataset cap, the user cap (0: none), then
per user: id, latest timestamp, n, and n (movie, "rating,timestamp") pairs. Answers {what, user, stored, new}:
what is ``ok`` (stored), or the cap the batch would pass, ``user`` (of that user) or ``dataset``, with nothing
written."""


@dataclass(frozen=True)
class FeedbackCaps:
    """Rows a dataset, and a user in it, may hold (0: no cap): MOVIEREC_MAX_FEEDBACK_ROWS[_PER_USER] in the API."""

    rows: int = 0
    rows_per_user: int = 0


class FeedbackStore:
    """The feedback of every dataset of one deployment."""

    def __init__(self, client: redis.Redis, *, prefix: str) -> None:
        self._r = client
        self._keys = Keys(prefix)
        self._add = Script(client, _ADD)

    def add(self, ds_id: str, rows: list[tuple[int, int, float, int]], *, caps: FeedbackCaps | None = None) -> int:
        """Store (user id, movie id, rating, timestamp) rows, all or none; validated by the caller. Answers how
        many rows are new (not a rating of a (user, movie) stored before); QuotaExceeded, nothing stored, when
        they would pass a cap."""
        caps = caps or FeedbackCaps()
        by_user: dict[int, dict[str, str]] = {}
        latest: dict[int, int] = {}
        for user, movie, rating, ts in rows:  # within a batch, too, the last row of a (user, movie) wins
            by_user.setdefault(user, {})[str(movie)] = f"{rating!r},{int(ts)}"
            latest[user] = max(latest.get(user, 0), int(ts))
        self._count_rows_once(ds_id)
        keys = [self._keys.feedback_users(ds_id), self._keys.feedback_rows(ds_id)]
        args: list[Any] = [caps.rows, caps.rows_per_user]
        for user, fields in by_user.items():
            keys.append(self._keys.feedback_user(ds_id, user))
            args += [user, latest[user], len(fields)]
            for pair in fields.items():
                args += pair
        what, user_id, stored, new = cast(list[Any], self._add(keys=keys, args=args))
        if what == b"user":
            raise QuotaExceeded(
                f"user {int(user_id)} holds {int(stored):,} feedback ratings in dataset {ds_id!r} and this batch "
                f"would add {int(new):,}, past MOVIEREC_MAX_FEEDBACK_ROWS_PER_USER ({caps.rows_per_user:,}); "
                "nothing of this batch was stored",
                details={"cap": "user", "user_id": int(user_id), "stored": int(stored), "new": int(new),
                         "limit": caps.rows_per_user, "setting": "MOVIEREC_MAX_FEEDBACK_ROWS_PER_USER"},
            )  # fmt: skip
        if what == b"dataset":
            raise QuotaExceeded(
                f"dataset {ds_id!r} holds {int(stored):,} feedback ratings and this batch would add {int(new):,}, "
                f"past MOVIEREC_MAX_FEEDBACK_ROWS ({caps.rows:,}); nothing of this batch was stored",
                details={"cap": "dataset", "stored": int(stored), "new": int(new), "limit": caps.rows,
                         "setting": "MOVIEREC_MAX_FEEDBACK_ROWS"},
            )  # fmt: skip
        return int(new)

    def _count_rows_once(self, ds_id: str) -> None:
        """The row count of a dataset whose feedback was stored before it was kept (SET NX: once)."""
        if self._r.exists(self._keys.feedback_rows(ds_id)) or not self.count_users(ds_id):
            return
        users = self.users(ds_id).tolist()
        pipe = self._r.pipeline(transaction=False)
        for u in users:
            pipe.hlen(self._keys.feedback_user(ds_id, u))
        self._r.set(self._keys.feedback_rows(ds_id), sum(cast(list[int], pipe.execute())), nx=True)

    def rows(self, ds_id: str) -> int:
        """(user, movie) feedback rows a dataset holds (those counted since the count was kept)."""
        return int(cast("bytes | None", self._r.get(self._keys.feedback_rows(ds_id))) or 0)

    def user(self, ds_id: str, user_id: int) -> Feedback:
        """One user's feedback on a dataset, by time."""
        return self.users_feedback(ds_id, [user_id])

    def users_feedback(self, ds_id: str | tuple[str, ...], user_ids: list[int]) -> Feedback:
        """The feedback of several users on a dataset, or on several (a feedback version's base, then the
        version itself, where posts go once the base is deleted: the later one wins), in one round trip."""
        sources = (ds_id,) if isinstance(ds_id, str) else ds_id
        pipe = self._r.pipeline(transaction=False)
        for u in user_ids:
            for source in sources:
                pipe.hgetall(self._keys.feedback_user(source, u))
        replies = iter(pipe.execute())
        rows: list[tuple[int, int, float, int]] = []
        for u in user_ids:
            merged: dict[bytes, bytes] = {}
            for _ in sources:
                merged.update(cast(dict[bytes, bytes], next(replies)))
            for movie, value in merged.items():
                rating, ts = value.decode().split(",")
                rows.append((int(u), int(movie), float(rating), int(ts)))
        return Feedback.of(rows)

    def users(self, ds_id: str) -> np.ndarray:
        """(u,) int64 ids of the users with feedback on a dataset, ascending."""
        ids = cast(list[bytes], self._r.zrange(self._keys.feedback_users(ds_id), 0, -1))
        return np.sort(np.asarray([int(i) for i in ids], dtype=np.int64))

    def count_users(self, ds_id: str) -> int:
        """How many users posted feedback on a dataset."""
        return int(cast(int, self._r.zcard(self._keys.feedback_users(ds_id))))

    def all(self, ds_id: str, *, batch: int = 1000) -> Feedback:
        """Every feedback row of a dataset."""
        users = self.users(ds_id).tolist()
        parts = [self.users_feedback(ds_id, users[i : i + batch]) for i in range(0, len(users), batch)]
        if not parts:
            return Feedback.of([])
        return Feedback(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("user_ids", "movie_ids",
                                                                                  "values", "times")))  # fmt: skip

    def delete(self, ds_id: str) -> tuple[int, int]:
        """Delete a dataset's feedback; answers (keys, bytes) as ``ArtifactStore.delete_under`` does."""
        return delete_matching(self._r, self._keys.feedback_of(ds_id))


def version_id(base: str, feedback: Feedback) -> str:
    """A feedback version's id: a hash of its base and its feedback rows."""
    key = json.dumps({"from": base, "feedback": feedback.digest(), "part": "feedback"}, sort_keys=True)
    return "ds-" + hashlib.blake2b(key.encode(), digest_size=12).hexdigest()
