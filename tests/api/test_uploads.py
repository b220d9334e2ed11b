"""Multipart ``POST /v1/datasets``: the refusals (400, 413), with nothing of the upload left in Redis."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
import redis

from cli.client import MultipartBody
from shared.infra.keys import Keys, upload_artifacts
from shared.infra.settings import Settings

MOVIES = b"movieId,title,genres\n1,Toy Story (1995),Animation\n"
RATINGS = b"userId,movieId,rating,timestamp\n1,1,4.0,964982703\n"


def multipart(tmp_path: Path, files: dict[str, bytes], fields: dict[str, str] | None = None) -> tuple[bytes, str]:
    """A multipart body (bytes) and its Content-Type, as ``movierec submit dataset --upload`` sends it."""
    paths = {}
    for i, (name, data) in enumerate(files.items()):
        paths[name] = tmp_path / f"{i}-{name}"
        paths[name].write_bytes(data)
    body = MultipartBody(paths, fields=fields or {})
    data = b"".join(body)
    assert len(data) == len(body)
    return data, body.content_type


def upload_keys(client: redis.Redis, prefix: str) -> list[bytes]:
    return list(client.scan_iter(match=Keys(prefix).artifacts_under(upload_artifacts(""))))


@pytest.mark.parametrize(
    ("files", "fields", "code", "says"),
    [
        ({"movies.csv": MOVIES, "ratings.csv": RATINGS, "secret.txt": b"x"}, {}, "invalid_request", "'secret.txt'"),
        ({"movies.csv": MOVIES}, {}, "invalid_request", "no ratings.csv"),
        ({"movies.csv": b"", "ratings.csv": RATINGS}, {}, "invalid_request", "movies.csv is empty"),
        ({"archive": b"movieId,title\n"}, {}, "invalid_request", "archive is not a zip"),
        ({"archive": b"PK\x03\x04", "movies.csv": MOVIES}, {}, "invalid_request", "either an archive or"),
        ({"movies.csv": MOVIES, "ratings.csv": RATINGS}, {"tags_per_movie": "0"}, "validation_error",
         "form.tags_per_movie"),
        ({"movies.csv": MOVIES, "ratings.csv": RATINGS}, {"colour": "red"}, "invalid_request", "'colour'"),
    ],
)  # fmt: skip
def test_a_bad_upload_is_a_400_naming_the_problem_and_leaves_nothing(
    client: Any,
    settings: Settings,
    redis_client: redis.Redis,
    tmp_path: Path,
    files: dict[str, bytes],
    fields: dict[str, str],
    code: str,
    says: str,
) -> None:
    body, content_type = multipart(tmp_path, files, fields)
    r = client.post("/v1/datasets", data=body, content_type=content_type)
    assert r.status_code == 400, r.get_data(as_text=True)
    error = r.get_json()["error"]
    assert error["code"] == code and says in error["message"], error
    assert upload_keys(redis_client, settings.key_prefix) == []


def test_a_malformed_multipart_body_is_a_400(client: Any, settings: Settings, redis_client: redis.Redis) -> None:
    body = b'--b\r\nContent-Disposition: form-data; name="movies.csv"\r\n\r\nmovieId,title\r\n'  # no closing boundary
    r = client.post("/v1/datasets", data=body, content_type="multipart/form-data; boundary=b")
    assert r.status_code == 400 and "multipart body" in r.get_json()["error"]["message"]
    r = client.post("/v1/datasets", data=body, content_type="multipart/form-data")
    assert r.status_code == 400 and "boundary" in r.get_json()["error"]["message"]
    assert upload_keys(redis_client, settings.key_prefix) == []


def test_json_keeps_its_own_limit_and_other_types_their_415(client: Any, tmp_path: Path) -> None:
    r = client.post("/v1/datasets", data='{"path": "' + "a" * (1 << 20) + '"}', content_type="application/json")
    assert r.status_code == 413 and "MOVIEREC_MAX_BODY_BYTES" in r.get_json()["error"]["message"]
    body, _ = multipart(tmp_path, {"movies.csv": MOVIES, "ratings.csv": RATINGS})
    r = client.post("/v1/datasets", data=body, content_type="text/plain")
    assert r.status_code == 415
    r = client.post("/v1/jobs/train", data=body, content_type="multipart/form-data; boundary=x")
    assert r.status_code == 415  # only /v1/datasets takes a multipart body


def test_past_the_upload_limit_is_a_413_naming_the_setting(
    settings: Settings, redis_client: redis.Redis, tmp_path: Path
) -> None:
    from api import create_app

    app = create_app({"TESTING": True}, settings=settings.model_copy(update={"max_upload_bytes": 4096}))
    body, content_type = multipart(tmp_path, {"movies.csv": MOVIES, "ratings.csv": RATINGS * 200})
    r = app.test_client().post("/v1/datasets", data=body, content_type=content_type)
    assert r.status_code == 413, r.get_data(as_text=True)
    error = r.get_json()["error"]
    assert error["code"] == "payload_too_large" and "MOVIEREC_MAX_UPLOAD_BYTES" in error["message"]
    assert error["details"]["limit_bytes"] == 4096
    # Without a Content-Length the body is read until it passes the limit; what was written is deleted.
    environ = {
        "CONTENT_TYPE": content_type,
        "HTTP_TRANSFER_ENCODING": "chunked",
        "wsgi.input": io.BytesIO(body),
        "wsgi.input_terminated": True,
    }
    r = app.test_client().post("/v1/datasets", environ_overrides=environ)
    assert r.status_code == 413, r.get_data(as_text=True)
    assert upload_keys(redis_client, settings.key_prefix) == []


def test_the_spec_documents_both_bodies(client: Any) -> None:
    body = client.get("/openapi.json").get_json()["paths"]["/v1/datasets"]["post"]["requestBody"]["content"]
    assert body["application/json"]["schema"]["$ref"].endswith("/DatasetIn")
    files, archive = body["multipart/form-data"]["schema"]["oneOf"]  # what the upload's check refuses, stated
    assert files["required"] == ["movies.csv", "ratings.csv"] and archive["required"] == ["archive"]
    assert {"movies.csv", "ratings.csv", "tags_per_movie"} <= set(files["properties"]) and "archive" not in files
    assert set(archive["properties"]) == {"archive", "genres_fix_csv", "tags_per_movie"}
    assert files["additionalProperties"] is False and archive["additionalProperties"] is False
    ratings = files["properties"]["ratings.csv"]
    assert ratings == {"type": "string", "format": "binary", "minLength": 1, "description": "a MovieLens file"}
    assert body["multipart/form-data"]["encoding"]["archive"] == {"contentType": "application/zip"}
