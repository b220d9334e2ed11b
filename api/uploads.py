"""Multipart uploads (``POST /v1/datasets`` as multipart/form-data): files streamed into Redis as they arrive.

The body is read from the WSGI input ``READ_BYTES`` at a time and cut into parts by werkzeug's sans-IO
multipart decoder; each file part goes straight into an ``ArtifactWriter`` (shared/store/artifacts.py) under
``uploads/<upload id>/<name>``, so the API never holds a whole file in memory or on disk. The limit is
``MOVIEREC_MAX_UPLOAD_BYTES`` on the whole body, in place of ``MOVIEREC_MAX_BODY_BYTES``: a Content-Length
past it is refused before a byte is read, a chunked body when it grows past it. On any refusal (400, 413, a
client that went away) every key of the upload is deleted before the answer.

Uploads being received hold an in-flight budget, shared by every API process through Redis
(shared/store/inflight.py): ``MOVIEREC_MAX_UPLOADS_IN_FLIGHT_BYTES`` in all (0: one upload's limit). An upload
holds its Content-Length before a byte of it is read (a chunked one ``RESERVE_STEP_BYTES`` at a time as it
arrives); past the budget it is refused 503 ``unavailable`` with ``Retry-After`` and ``details.cause``
``uploads_in_flight``. What it holds is released when it is stored or refused, whatever the way out; a process
that dies meanwhile holds it for one lease (``MOVIEREC_LEASE_TTL_S``, renewed as blocks arrive) at most.

Parts (shared/logic/uploads.py names them): ``movies.csv`` and ``ratings.csv``, optionally ``tags.csv``,
``genome-scores.csv``, ``genome-tags.csv``, ``links.csv``, ``genres_fix_csv``; or one ``archive`` (a MovieLens
.zip), whose content the worker checks. Beside them, the form field ``tags_per_movie``.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from apiflask import abort
from flask import request
from marshmallow import ValidationError
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.sansio.multipart import Data, Epilogue, Event, Field, File, MultipartDecoder, NeedData
from werkzeug.wsgi import get_input_stream

from shared.errors import InvalidRequest, PayloadTooLarge
from shared.infra.keys import upload_artifact
from shared.infra.settings import DEFAULT_TAGS_PER_MOVIE
from shared.logic.ingest import MAX_TAGS_PER_MOVIE
from shared.logic.uploads import ARCHIVE, GENRES_FIX, REQUIRED_FILES, UPLOAD_PARTS, drop_upload
from shared.store.artifacts import ArtifactStore, ArtifactWriter
from shared.store.inflight import InFlightBudget

from .context import services
from .schemas import DatasetUploadFields

UPLOAD_ENDPOINTS = frozenset({"datasets.create_dataset"})
"""The endpoints that take a multipart body besides JSON."""
READ_BYTES = 64 << 10
MAX_FIELD_BYTES = 64
"""A form field (``tags_per_movie``) longer than this is refused."""
MAX_PARTS = 16
ZIP_MAGIC = b"PK\x03\x04"
RESERVE_STEP_BYTES = 16 << 20
"""A chunked upload (no Content-Length) takes the in-flight budget this much at a time, as its bytes arrive."""
RETRY_AFTER_S = 5
"""What a 503 for the in-flight budget tells the client to wait (an upload of 100 MB takes seconds on a LAN)."""
_FIELDS = frozenset(DatasetUploadFields().fields)
_UNSAFE = re.compile(r"[^A-Za-z0-9._ ()+-]")


def is_upload() -> bool:
    """This request is a multipart body sent to an endpoint that takes one."""
    return request.endpoint in UPLOAD_ENDPOINTS and request.mimetype == "multipart/form-data"


@dataclass
class Upload:
    """What a multipart body brought: its id, the names its files are stored under, the form's values."""

    id: str
    files: list[str] = field(default_factory=list)
    filenames: list[str] = field(default_factory=list)
    """The client's names of the files (made safe), for the dataset's ``source``."""
    form: dict[str, Any] = field(default_factory=dict)

    @property
    def source(self) -> str:
        return "upload: " + ", ".join(self.filenames or self.files)


def receive(artifacts: ArtifactStore, *, limit: int, ttl_s: int) -> Upload:
    """Stream the request's multipart body into Redis and check it; answers the Upload, or raises (400
    ``InvalidRequest`` / validation_error, 413 ``PayloadTooLarge``) with nothing of it left in Redis."""
    boundary = request.mimetype_params.get("boundary", "")
    if not 0 < len(boundary) <= 70:  # RFC 2046
        raise InvalidRequest("a multipart/form-data body needs a boundary parameter (1 to 70 characters)")
    length = request.content_length
    if length is not None and length > limit:
        raise _too_large(limit)
    upload = Upload(uuid.uuid4().hex)
    held = _Held.of(upload.id)
    try:
        held.grow(length if length is not None else min(RESERVE_STEP_BYTES, limit))  # 503 before a byte is read
        _receive(artifacts, upload, boundary.encode("latin-1"), limit=limit, ttl_s=ttl_s, held=held)
        _check(artifacts, upload)
    except BaseException:
        drop_upload(artifacts, upload.id)
        raise
    finally:
        held.release()
    return upload


def in_flight_budget() -> tuple[InFlightBudget, int]:
    """The deployment's budget of bytes that uploads being received hold, and its cap
    (MOVIEREC_MAX_UPLOADS_IN_FLIGHT_BYTES; 0: one upload's limit, MOVIEREC_MAX_UPLOAD_BYTES)."""
    svc = services()
    keys, settings = svc.keys, svc.settings
    budget = InFlightBudget(svc.redis, key=keys.uploads_in_flight, expiry_key=keys.uploads_in_flight_expiry)
    return budget, settings.max_uploads_in_flight_bytes or settings.max_upload_bytes


class _Held:
    """One upload's share of the in-flight budget: ``grow`` takes more (or 503), ``renew`` keeps the lease
    alive, ``release`` gives it all back."""

    def __init__(self, budget: InFlightBudget, holder: str, *, cap: int, lease_s: float) -> None:
        self._budget, self._holder, self.cap, self._lease_s = budget, holder, cap, lease_s
        self.bytes = 0
        self._renewed = 0.0

    @classmethod
    def of(cls, upload_id: str) -> _Held:
        budget, cap = in_flight_budget()
        return cls(budget, upload_id, cap=cap, lease_s=services().settings.lease_ttl_s)

    def grow(self, nbytes: int) -> None:
        if nbytes > self.cap:
            raise PayloadTooLarge(
                f"the upload is larger than {self.cap} bytes, all uploads in flight may hold "
                "(MOVIEREC_MAX_UPLOADS_IN_FLIGHT_BYTES)",
                details={"limit_bytes": self.cap, "setting": "MOVIEREC_MAX_UPLOADS_IN_FLIGHT_BYTES"},
            )
        granted, in_flight = self._budget.reserve(self._holder, nbytes, cap=self.cap, lease_s=self._lease_s)
        if not granted:
            abort(
                503,
                message=f"uploads being received already hold {in_flight} of {self.cap} bytes "
                f"(MOVIEREC_MAX_UPLOADS_IN_FLIGHT_BYTES); try again in a few seconds",
                detail={"cause": "uploads_in_flight", "in_flight_bytes": in_flight, "needed_bytes": nbytes,
                        "limit_bytes": self.cap, "setting": "MOVIEREC_MAX_UPLOADS_IN_FLIGHT_BYTES"},
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )  # fmt: skip
        self.bytes, self._renewed = max(self.bytes, nbytes), time.monotonic()

    def received(self, total: int, *, limit: int) -> None:
        """``total`` bytes of the body are in: hold more when they pass what is held, else renew the lease
        once a third of it has gone by."""
        if total > self.bytes:
            self.grow(max(total, min(self.bytes + RESERVE_STEP_BYTES, limit, self.cap)))
        elif time.monotonic() - self._renewed > self._lease_s / 3:
            self.grow(self.bytes)

    def release(self) -> None:
        if self.bytes:
            self._budget.release(self._holder)
            self.bytes = 0


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"the upload is larger than {limit} bytes (MOVIEREC_MAX_UPLOAD_BYTES)",
        details={"limit_bytes": limit, "setting": "MOVIEREC_MAX_UPLOAD_BYTES"},
    )


def _receive(artifacts: ArtifactStore, upload: Upload, boundary: bytes, *, limit: int, ttl_s: int, held: _Held) -> None:
    decoder = MultipartDecoder(boundary, max_parts=MAX_PARTS)
    parts = _Parts(artifacts, upload, ttl_s=ttl_s)
    for block in _blocks(limit, held):
        try:
            decoder.receive_data(block or None)
            event = decoder.next_event()
            while not isinstance(event, NeedData | Epilogue):
                parts.on(event)
                event = decoder.next_event()
        except RequestEntityTooLarge:  # the decoder's count of parts
            raise InvalidRequest(f"the body has more than {MAX_PARTS} parts") from None
        except ValueError:
            raise InvalidRequest("the multipart body is malformed (cut short, or a part without a name)") from None
        if isinstance(event, Epilogue):
            return
    raise InvalidRequest("the multipart body ends before its closing boundary")


def _blocks(limit: int, held: _Held) -> Iterator[bytes]:
    """The request body, ``READ_BYTES`` at a time, then one empty block; 413 once it passes ``limit``, 503 once
    it passes what ``held`` may take of the in-flight budget."""
    stream = get_input_stream(request.environ, max_content_length=limit)
    received = 0
    while True:
        try:
            block = stream.read(READ_BYTES)
        except RequestEntityTooLarge:  # a chunked body past the limit
            raise _too_large(limit) from None
        received += len(block)
        if received > limit:
            raise _too_large(limit)
        held.received(received, limit=limit)
        yield block
        if not block:
            return


class _Parts:
    """Where the decoder's events go: a file part's data into its writer, a form field's into memory."""

    def __init__(self, artifacts: ArtifactStore, upload: Upload, *, ttl_s: int) -> None:
        self._artifacts, self._upload, self._ttl_s = artifacts, upload, ttl_s
        self._writer: ArtifactWriter | None = None
        self._name = ""
        self._value = bytearray()

    def on(self, event: Event) -> None:
        if isinstance(event, Field | File):
            self._writer = _open_part(self._artifacts, self._upload, event, ttl_s=self._ttl_s)
            self._name = event.name
            self._value.clear()
        elif isinstance(event, Data):
            if self._writer is not None:
                self._writer.write(event.data)
                if not event.more_data:
                    self._writer.commit()
                    self._writer = None
                return
            self._value += event.data
            if len(self._value) > MAX_FIELD_BYTES:
                raise InvalidRequest(f"form field {self._name!r} is longer than {MAX_FIELD_BYTES} bytes")
            if not event.more_data:
                self._upload.form[self._name] = _text(self._name, bytes(self._value))


def _open_part(artifacts: ArtifactStore, upload: Upload, event: Field | File, *, ttl_s: int) -> ArtifactWriter | None:
    name = event.name
    if name in _FIELDS:
        if name in upload.form:
            raise InvalidRequest(f"form field {name!r} is sent twice")
        return None
    stored = UPLOAD_PARTS.get(name)
    if stored is None:
        accepted = ", ".join([*UPLOAD_PARTS, *_FIELDS])
        raise InvalidRequest(f"unknown part {str(name)[:80]!r}; the parts accepted are: {accepted}")
    if stored in upload.files:
        raise InvalidRequest(f"part {name!r} is sent twice")
    upload.files.append(stored)
    filename = getattr(event, "filename", "") or ""
    safe = _UNSAFE.sub("_", filename.replace("\\", "/").rsplit("/", 1)[-1])[:100]
    upload.filenames.append(safe or stored)
    return artifacts.writer(upload_artifact(upload.id, stored), ttl_s=ttl_s)


def _text(name: str, value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest(f"form field {name!r} is not UTF-8 text") from None


def _check(artifacts: ArtifactStore, upload: Upload) -> None:
    """The parts make a dataset: an archive alone, or movies.csv and ratings.csv; no empty file; the archive
    starts as a zip does; the form fields validate (400 validation_error naming the field)."""
    files = set(upload.files)
    if ARCHIVE in files:
        if files - {ARCHIVE, UPLOAD_PARTS["genres_fix_csv"]}:
            raise InvalidRequest("send either an archive or the MovieLens files, not both")
    else:
        missing = [name for name in REQUIRED_FILES if name not in files]
        if missing:
            raise InvalidRequest(f"the upload has no {' and no '.join(missing)} (or send an archive: a MovieLens .zip)")
    for name in upload.files:
        manifest = artifacts.manifest(upload_artifact(upload.id, name))
        if manifest is None or manifest.size == 0:
            raise InvalidRequest(f"{name} is empty")
    if ARCHIVE in files and artifacts.head(upload_artifact(upload.id, ARCHIVE), len(ZIP_MAGIC)) != ZIP_MAGIC:
        raise InvalidRequest("archive is not a zip file (send the MovieLens .zip as GroupLens distributes it)")
    try:
        upload.form = DatasetUploadFields().load(upload.form)
    except ValidationError as exc:
        abort(400, detail={"form": exc.messages})


_PART_NAMES = {stored: name for name, stored in UPLOAD_PARTS.items()}
_PART_SCHEMAS: dict[str, Any] = {
    **{name: {"type": "string", "format": "binary", "minLength": 1, "description": "a MovieLens file"}
       for name in UPLOAD_PARTS},
    "genres_fix_csv": {"type": "string", "format": "binary", "minLength": 1, "description": "movieId,genres CSV"},
    "archive": {"type": "string", "format": "binary", "minLength": 1,
                "description": "a MovieLens .zip (a zip file: anything else is refused, 400)"},
    "tags_per_movie": {"type": "integer", "minimum": 1, "maximum": MAX_TAGS_PER_MOVIE,
                       "default": DEFAULT_TAGS_PER_MOVIE},
}  # fmt: skip


def _alternative(parts: list[str], required: list[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {name: _PART_SCHEMAS[name] for name in [*parts, *_FIELDS]},
        "required": required,
        "additionalProperties": False,
    }


_ARCHIVE_PARTS = [_PART_NAMES[ARCHIVE], _PART_NAMES[GENRES_FIX]]
MULTIPART_SCHEMA: dict[str, Any] = {
    "description": "movies.csv and ratings.csv (the other files optional), or one archive: a MovieLens .zip "
    "as GroupLens distributes it, with genres_fix_csv at most. No file empty. Streamed into Redis, so the worker "
    "needs no shared disk; 413 past MOVIEREC_MAX_UPLOAD_BYTES.",
    "oneOf": [  # what _check enforces
        _alternative([name for name in UPLOAD_PARTS if name != _PART_NAMES[ARCHIVE]], list(REQUIRED_FILES)),
        _alternative(_ARCHIVE_PARTS, [_PART_NAMES[ARCHIVE]]),
    ],
}


def document_uploads(spec: dict[Any, Any]) -> dict[Any, Any]:
    """Add the multipart body beside the JSON one of each upload endpoint in /openapi.json."""
    operation = spec.get("paths", {}).get("/v1/datasets", {}).get("post")
    if operation is not None and "requestBody" in operation:
        operation["requestBody"]["content"]["multipart/form-data"] = {
            "schema": MULTIPART_SCHEMA,
            "encoding": {_PART_NAMES[ARCHIVE]: {"contentType": "application/zip"}},
        }
        operation.setdefault("responses", {})["503"] = {
            "description": "Redis unreachable, loading, read-only or out of memory; or (multipart) the uploads "
            "being received hold MOVIEREC_MAX_UPLOADS_IN_FLIGHT_BYTES already (details.cause uploads_in_flight): "
            "nothing of the body was read. Retry-After says when to retry",
            "headers": {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}},
        }
    return spec
