"""Every Redis key and every artifact name movierec writes, named once.

Redis keys carry the deployment's prefix (``MOVIEREC_KEY_PREFIX``), so deployments and test runs share one
Redis safely; ``Keys(prefix)`` builds them.

A deployment holds tenants (issue #26), and each tenant's data lives under a prefix of its own, its *keyspace*
(``tenant_prefix``): every key below is a tenant's, except the cluster's machinery marked [cluster], which
lives under the deployment's prefix alone and holds no tenant's data.

    tenant "default"   <prefix>                  the deployment's own prefix: a store made before tenants
                                                 existed opens as tenant "default", every key where it was
    tenant T           <prefix>:tenant:<T>       T's keys; no key kind below is named "tenant", so no key
                                                 of the default tenant can be mistaken for one of T's
    <prefix>:tenants                             [cluster] set: every tenant that has queued a job (the
                                                 janitor sweeps each one's jobs)

So a tenant's datasets, models, feedback, artifacts, cached vectors, audit trail, uploads in flight, jobs,
locks, janitor marks and job metrics are all keys of its keyspace: another tenant's id is not a key in it,
and answers as an unknown id does. Artifact names carry no prefix (the artifact store adds
``<prefix>:art:``); the functions at the bottom build them. No other module writes a key or an artifact name
as an f-string (tests/unit/test_keys.py greps for it).

    <prefix>:job:<id>                      hash: one job's record (shared/jobs/store.py)
    <prefix>:job:<id>:finished             list: the finish signal a waiter BLPOPs (a minute)
    <prefix>:job:<id>:shards               hash: shard -> stats of a sharded job's finished shards
    <prefix>:jobs / :jobs:active / :jobs:expiry   the listing index, the unfinished ids, the expiry index
    <prefix>:lock:<name>                   a short exclusive claim (redis-py's Lock), e.g. a pipeline's step
    <prefix>:unit:<job>:<unit>:lease|starts  [cluster] who runs a unit of work, how often it was started
    <prefix>:worker:<name>                 [cluster] a worker's heartbeat
    <prefix>:fastlane:responders           [cluster] the fast lane's live responders (its ask and reply channels are
                                           pub/sub, not keys: shared/jobs/fastlane.py)
    <prefix>:janitor:lock                  [cluster] the janitor's sweep lock
    <prefix>:janitor:idle:<job>|queued:<job>|resends:<job>   the janitor's marks on a job
    <prefix>:dataset:<id> / :datasets      a dataset's record, and the index of them
    <prefix>:model:<version> / :models / :active_model   model records, their index, the serving pointer
    <prefix>:feedback:<ds>:user:<uid> / :users / :rows   ratings given after ingest (shared/store/feedback.py)
    <prefix>:uploads:in_flight / :in_flight:expiry   bytes of the uploads being received (shared/store/inflight.py)
    <prefix>:audit                         stream: who changed what and when, bounded (shared/store/audit.py)
    <prefix>:events                        stream: events posted, bounded in count and age (shared/store/events.py)
    <prefix>:attribution:secret            the key that tags the tenant's recommendation ids (shared/ml/attribution.py)
    <prefix>:experiments / :experiments:seq / :experiments:running   experiment records by name, the last number
                                           given, the running one's record (shared/store/experiments.py)
    <prefix>:experiment:<n>:totals|users|series   an experiment's counters: in all, per user, per time bucket
    <prefix>:usage:stored_bytes            the bytes the tenant's keyspace held when last measured, a minute
                                           (shared/store/usage.py)
    <prefix>:metrics:jobs|job_seconds      job outcome counters and duration histograms (shared/infra/metrics.py)
    <prefix>:readyz-probe                  [cluster] never written: /readyz DELs it to see whether Redis takes writes
    <prefix>:art:<name>[:<i>|:tmp:<id>[:<i>]]   an artifact's manifest, its chunks, a write in progress
                                           (``artifacts_under``: a SCAN pattern for a name prefix's artifacts)
    <prefix>:vec:<model identity>:<pooling>:<sha1(text)>   one cached string vector
    <prefix>:celery:...                    [cluster] Celery's queues (kombu's ``global_keyprefix``; kombu names
                                           the rest); each message names its job's tenant in a header
                                           (shared/jobs/celery_app.py ``TENANT_HEADER``)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_TENANT = "default"
"""The tenant of a plain ``KEY`` entry of ``MOVIEREC_API_KEYS``, of an open API, and of a store made before
tenants existed: its keyspace is the deployment's prefix itself."""

TENANT_SHAPE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
"""A tenant's name: lower-case letters, digits, '-' and '_', at most 32, not starting with a symbol (so no glob
character, no ':', nothing a key could be confused by)."""


def tenant_prefix(prefix: str, tenant: str) -> str:
    """The prefix of ``tenant``'s keyspace in the deployment whose prefix is ``prefix`` (see the module docstring);
    ValueError for a name that is not a tenant's."""
    if not TENANT_SHAPE.match(tenant):
        raise ValueError(f"{tenant!r} is not a tenant's name (1-32 of a-z 0-9 - _, starting with a-z 0-9)")
    return prefix if tenant == DEFAULT_TENANT else f"{prefix}:tenant:{tenant}"


@dataclass(frozen=True)
class Keys:
    """The Redis keys of one deployment."""

    prefix: str

    # -- jobs (shared/jobs/store.py) ----------------------------------------------------------------------
    def job(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def job_finished(self, job_id: str) -> str:
        return f"{self.job(job_id)}:finished"

    def job_shards(self, job_id: str) -> str:
        return f"{self.job(job_id)}:shards"

    @property
    def jobs(self) -> str:
        return f"{self.prefix}:jobs"

    @property
    def jobs_active(self) -> str:
        return f"{self.prefix}:jobs:active"

    @property
    def jobs_expiry(self) -> str:
        return f"{self.prefix}:jobs:expiry"

    def lock(self, name: str) -> str:
        return f"{self.prefix}:lock:{name}"

    # -- units of work (shared/jobs/leases.py) ------------------------------------------------------------
    def unit_lease(self, job_id: str, unit: str) -> str:
        return f"{self.prefix}:unit:{job_id}:{unit}:lease"

    def unit_starts(self, job_id: str, unit: str) -> str:
        return f"{self.prefix}:unit:{job_id}:{unit}:starts"

    # -- the fast lane (shared/jobs/fastlane.py) -----------------------------------------------------------
    @property
    def fastlane_responders(self) -> str:
        """Sorted set: each live responder's request channel, scored by the Redis time of its last beat."""
        return f"{self.prefix}:fastlane:responders"

    def fastlane_ask(self, host: str, pid: int) -> str:
        """The pub/sub channel a responder takes requests on (never a key: pub/sub writes nothing)."""
        return f"{self.prefix}:fastlane:ask:{host}:{pid}"

    def fastlane_reply(self, token: str) -> str:
        """The pub/sub channel an API process takes its replies on."""
        return f"{self.prefix}:fastlane:reply:{token}"

    # -- workers and the janitor (workers/) ---------------------------------------------------------------
    def worker(self, name: str) -> str:
        return f"{self.prefix}:worker:{name}"

    @property
    def workers_pattern(self) -> str:
        """A SCAN pattern matching every worker's heartbeat."""
        return self.worker("*")

    @property
    def janitor_lock(self) -> str:
        return f"{self.prefix}:janitor:lock"

    def janitor_idle(self, job_id: str) -> str:
        return f"{self.prefix}:janitor:idle:{job_id}"

    def janitor_queued(self, job_id: str) -> str:
        return f"{self.prefix}:janitor:queued:{job_id}"

    def janitor_resends(self, job_id: str) -> str:
        return f"{self.prefix}:janitor:resends:{job_id}"

    def janitor_marks(self, job_id: str) -> tuple[str, str, str]:
        """Every mark the janitor may leave on a job: deleted together when the job finishes."""
        return self.janitor_idle(job_id), self.janitor_queued(job_id), self.janitor_resends(job_id)

    # -- stores (shared/store/) ---------------------------------------------------------------------------
    def dataset(self, ds_id: str) -> str:
        return f"{self.prefix}:dataset:{ds_id}"

    @property
    def datasets(self) -> str:
        return f"{self.prefix}:datasets"

    def model(self, version: str) -> str:
        return f"{self.prefix}:model:{version}"

    @property
    def models(self) -> str:
        return f"{self.prefix}:models"

    @property
    def active_model(self) -> str:
        return f"{self.prefix}:active_model"

    @property
    def readyz_probe(self) -> str:
        """A key that is never written: ``/readyz`` DELs it, a write Redis refuses when it refuses writes."""
        return f"{self.prefix}:readyz-probe"

    # -- metrics pushed by every process through Redis (shared/infra/metrics.py) ------------------------------
    @property
    def metrics_jobs(self) -> str:
        """Hash: "<kind>\\t<status>" -> jobs of that kind that finished so (a counter, never reset)."""
        return f"{self.prefix}:metrics:jobs"

    @property
    def metrics_job_seconds(self) -> str:
        """Hash: "<kind>\\t<run|latency>\\t<bucket bound|sum|count>" -> a job-duration histogram's cells."""
        return f"{self.prefix}:metrics:job_seconds"

    # -- feedback (shared/store/feedback.py) --------------------------------------------------------------
    def feedback_user(self, ds_id: str, user_id: int) -> str:
        """Hash: movie id -> "rating,timestamp" of one user's ratings given after ingest (the last one wins)."""
        return f"{self.prefix}:feedback:{ds_id}:user:{user_id}"

    def feedback_users(self, ds_id: str) -> str:
        """Sorted set: user id -> time of their last feedback, over a dataset."""
        return f"{self.prefix}:feedback:{ds_id}:users"

    def feedback_rows(self, ds_id: str) -> str:
        """String: how many (user, movie) feedback rows a dataset holds, for its cap (MOVIEREC_MAX_FEEDBACK_ROWS)."""
        return f"{self.prefix}:feedback:{ds_id}:rows"

    def feedback_of(self, ds_id: str) -> str:
        """A SCAN pattern matching every feedback key of a dataset."""
        return f"{self.prefix}:feedback:{glob_escape(ds_id)}:*"

    # -- uploads being received (shared/store/inflight.py) ---------------------------------------------------
    @property
    def uploads_in_flight(self) -> str:
        """Hash: upload id -> bytes it holds of the in-flight budget (MOVIEREC_MAX_UPLOADS_IN_FLIGHT_BYTES)."""
        return f"{self.prefix}:uploads:in_flight"

    @property
    def uploads_in_flight_expiry(self) -> str:
        """Sorted set: upload id -> the Redis time its lease on the budget ends unless renewed."""
        return f"{self.prefix}:uploads:in_flight:expiry"

    # -- the audit trail (shared/store/audit.py) ----------------------------------------------------------
    @property
    def audit(self) -> str:
        """Stream: one entry per change of state through the API (who, what, when, the outcome)."""
        return f"{self.prefix}:audit"

    # -- what users did with what was served (shared/store/events.py, shared/store/experiments.py) ------------
    @property
    def events(self) -> str:
        """Stream: the events posted (impressions, clicks, plays, ratings), bounded in count and age."""
        return f"{self.prefix}:events"

    def events_batch(self, digest: str) -> str:
        """String: a batch of events posted with an ``Idempotency-Key`` (``digest``: of the key), kept a day: the
        token of the request that stored it, the digest of its body and its summary, so a retry is answered as
        the first was, and counted once."""
        return f"{self.prefix}:events:batch:{digest}"

    @property
    def attribution_secret(self) -> str:
        """String: the key of the tenant's recommendation ids' tags (shared/ml/attribution.py), made once."""
        return f"{self.prefix}:attribution:secret"

    @property
    def experiments(self) -> str:
        """Hash: experiment name -> its record (JSON)."""
        return f"{self.prefix}:experiments"

    @property
    def experiments_seq(self) -> str:
        """String: the last experiment number given (an experiment's counters are named by its number)."""
        return f"{self.prefix}:experiments:seq"

    @property
    def experiment_running(self) -> str:
        """String: the running experiment's record (JSON), read once per recommendation; absent when none runs."""
        return f"{self.prefix}:experiments:running"

    def experiment_counts(self, number: int) -> tuple[str, str, str]:
        """Hashes of an experiment's counters: totals, per user (the intervals' units), per time bucket."""
        base = f"{self.prefix}:experiment:{number}"
        return f"{base}:totals", f"{base}:users", f"{base}:series"

    # -- what a tenant stores (shared/store/usage.py) -----------------------------------------------------------
    @property
    def usage_stored_bytes(self) -> str:
        """String: the bytes the keyspace held at its last measurement (``MOVIEREC_MAX_STORED_BYTES``), a minute."""
        return f"{self.prefix}:usage:stored_bytes"

    def artifact(self, name: str) -> str:
        """An artifact's manifest; ``artifact_chunk`` and ``artifact_tmp`` derive from it."""
        return f"{self.prefix}:art:{name}"

    @staticmethod
    def artifact_chunk(manifest_key: str, i: int) -> str:
        return f"{manifest_key}:{i}"

    @staticmethod
    def artifact_tmp(manifest_key: str, write_id: str) -> str:
        return f"{manifest_key}:tmp:{write_id}"

    def artifacts_under(self, name_prefix: str) -> str:
        """A SCAN pattern matching every key (manifests, chunks, writes in progress) of the artifacts whose
        names start with ``name_prefix``; glob characters in the prefix match only themselves."""
        return self.artifact(glob_escape(name_prefix)) + "*"

    def vector(self, identity: str, pooling: str, digest: str) -> str:
        return f"{self.prefix}:vec:{identity[:32]}:{pooling}:{digest}"

    @property
    def celery_prefix(self) -> str:
        """kombu's ``global_keyprefix``: every key Celery writes starts with it."""
        return f"{self.prefix}:celery:"

    @property
    def everything(self) -> str:
        """A SCAN pattern matching every key under this prefix (the default tenant's: every other tenant's too)."""
        return f"{self.prefix}:*"

    # -- tenants (shared/logic/services.py) ---------------------------------------------------------------
    @property
    def tenants(self) -> str:
        """[cluster] Set: the name of every tenant that has queued a job."""
        return f"{self.prefix}:tenants"


def shard_id(lo: int) -> str:
    """A shard of a sharded job (shared/jobs/sharded.py), named by its first item, zero-padded so names sort in
    item order: its field in the job's shard hash, its unit, the last part of its part's artifact name."""
    return f"{lo:09d}"


def glob_escape(text: str) -> str:
    """``text`` as a Redis glob pattern that matches only itself."""
    return re.sub(r"([\\*?\[\]^])", r"\\\1", text)


# -- artifact names (no prefix: the artifact store adds it) -------------------------------------------------
TAG_EVENT_ARRAYS = ("tag_user", "tag_movie", "tag_text", "tag_time")
"""The descriptor parts with one value per tags.csv event."""
DESCRIPTOR_PARTS = ("terms", "genre_indptr", "genre_indices", "genome_indptr", "genome_indices", "in_genome",
                    *TAG_EVENT_ARRAYS)  # fmt: skip
"""What a dataset's descriptors are made of (format 3 on), named as ``shared.ml.movielens.DescriptorParts``'
fields; a derived dataset copies them (shared/store/datasets.py)."""
DATASET_ARRAYS = (
    "movie_ids",
    "titles",
    "vocabulary",
    "desc_indptr",
    "desc_indices",
    "user_ids",
    "ratings_indptr",
    "ratings_movie",
    "ratings_value",
    "ratings_time",
    *DESCRIPTOR_PARTS,
)
"""The artifacts a dataset is stored as (shared/store/datasets.py documents each one's dtype and shape)."""


def dataset_artifact(ds_id: str, part: str) -> str:
    if part not in DATASET_ARRAYS:
        raise ValueError(f"a dataset has no artifact {part!r}")
    return f"dataset/{ds_id}/{part}"


def triplets_artifact(ds_id: str, strategy: str, seed: int) -> str:
    return f"triplets/{ds_id}/{strategy}-{seed}"


def coliked_triplets_artifact(ds_id: str, *, positives: int, liked_at: float, alpha: float, seed: int) -> str:
    """Triplets mined from ratings (shared/ml/coliked.py), named by everything that changes them:
    ``triplets/<ds>/coliked-p<positives>-l<liked_at>-a<alpha>-<seed>``, floats as Python's shortest repr."""
    return f"triplets/{ds_id}/coliked-p{int(positives)}-l{float(liked_at)!r}-a{float(alpha)!r}-{int(seed)}"


def both_triplets_artifact(descriptors: str, ratings: str) -> str:
    """Descriptor and co-liked triplets mined together (source "both"): ``<descriptors name>+<ratings name's
    last part>``, e.g. ``triplets/<ds>/uniform-min-42+coliked-p5-l4.0-a0.75-42``."""
    return f"{descriptors}+{ratings.rsplit('/', 1)[-1]}"


def triplets_part(triplets: str, job_id: str, lo: int) -> str:
    """One mining shard's part of ``triplets``, written by the shard and dropped by the join."""
    return f"{triplets}/part/{job_id}/{shard_id(lo)}"


def triplets_range(triplets: str, lo: int, hi: int) -> str:
    """Which job mined anchors [lo, hi) of ``triplets`` (JSON {"job"}), for an identical job's shard of that range
    to take its part rather than mine it again (shared/logic/mining.py ``mine_shard_part``)."""
    return f"{triplets}/range/{shard_id(lo)}-{shard_id(hi)}"


def embeddings_artifact(ds_id: str, identity: str, pooling: str) -> str:
    """A dataset's (movies, dim) encoder matrix for one model identity and pooling."""
    return f"embeddings/{ds_id}/{identity[:16]}-{pooling}"


EVALUATION_SPLIT_ARRAYS = ("user_ids", "evaluated", "relevant_indptr", "relevant_movie", "cold", "cohort_user_ids",
                           "cohort_indptr", "cohort_movie", "cohort_value", "cohort_time", "summary")  # fmt: skip
"""The test part of an evaluation's split and its new-user cohort (shared/logic/scoring.py documents each one)."""


def evaluation_split_artifact(training_ds: str, relevant_at: float, part: str) -> str:
    """One array of the test part that goes with derived training dataset ``training_ds``:
    ``evaluations/<ds>/test-r<relevant_at>/<part>``, the float as Python's shortest repr."""
    if part not in EVALUATION_SPLIT_ARRAYS:
        raise ValueError(f"an evaluation split has no artifact {part!r}")
    return f"evaluations/{training_ds}/test-r{float(relevant_at)!r}/{part}"


EVALUATION_FIT_ARRAYS = ("indptr", "indices", "data", "item_factors", "settings", "summary")
"""A baseline fitted for a test scoring (``shared.ml.baselines.to_arrays``'s parts), and its summary."""


def evaluation_fit_artifact(training_ds: str, fit_id: str, part: str) -> str:
    """One array of a baseline fitted on derived training dataset ``training_ds``, stored by the scoring shard
    that fitted it for every other: ``evaluations/<ds>/fits/<fit id>/<part>``, ``summary`` written last."""
    if part not in EVALUATION_FIT_ARRAYS:
        raise ValueError(f"a fitted baseline has no artifact {part!r}")
    return f"evaluations/{training_ds}/fits/{fit_id}/{part}"


def evaluation_part(job_id: str, lo: int) -> str:
    """One scoring shard's top-k movie rows of an evaluation job (every row of its table), dropped by its join."""
    return f"evaluations/part/{job_id}/{shard_id(lo)}"


def upload_artifact(upload_id: str, name: str) -> str:
    """One uploaded file (``movies.csv``, ``ratings.csv``, ... or the MovieLens ``.zip``) on its way from the API
    to the worker that ingests it: ``uploads/<upload id>/<name>``."""
    return f"uploads/{upload_id}/{name}"


def upload_artifacts(upload_id: str) -> str:
    """The name prefix of every file of one upload (dropped once it is ingested)."""
    return f"uploads/{upload_id}/"


def batch_part(job_id: str, lo: int) -> str:
    """One shard's rows of a batch recommendation job (``recommend-batch/<job>/part/<lo>``): the parts are the
    result, streamed in order (shared/logic/batch.py)."""
    return f"recommend-batch/{job_id}/part/{shard_id(lo)}"


def batch_result(job_id: str, part: str) -> str:
    """A batch recommendation job's whole-job arrays: ``user_ids``, its users as resolved once at planning."""
    return f"recommend-batch/{job_id}/{part}"


def model_artifacts(version: str) -> str:
    """The name prefix of every artifact of a model version (``models/<version>/``)."""
    return f"models/{version}/"


def dataset_owned_artifacts(ds_id: str) -> tuple[str, ...]:
    """The name prefixes of every artifact a dataset owns: its arrays, triplets, encoder matrices and
    evaluation splits (``dataset/<id>/``, ``triplets/<id>/``, ``embeddings/<id>/``, ``evaluations/<id>/``)."""
    return tuple(f"{head}/{ds_id}/" for head in ("dataset", "triplets", "embeddings", "evaluations"))


def meta_of(name: str) -> str:
    """The JSON that describes an artifact, stored beside it."""
    return f"{name}/meta"


def model_artifact(version: str, part: str) -> str:
    """A model version's ``weights``, ``embeddings`` (projected), ``index``, ``index/group`` or ``map`` (its movies
    projected to 2-D for the dashboard, built by its index job)."""
    if part not in ("weights", "embeddings", "index", "index/group", "map"):
        raise ValueError(f"a model has no artifact {part!r}")
    return f"models/{version}/{part}"


def encoded_artifact(job_id: str) -> str:
    """The vectors an encode job of texts or items answers."""
    return f"encoded/{job_id}"


def encode_input_artifact(request_id: str) -> str:
    """The strings of an encode request, on their way to the worker (dropped once it succeeds)."""
    return f"encode-input/{request_id}"
