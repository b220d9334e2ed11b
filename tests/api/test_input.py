"""Input is validated at the edge: what is not JSON, not Unicode, over a limit or outside the data root is a
400 (or 413) that names the field and the limit, before anything is recorded or queued; any other Unicode
goes through the whole system and comes back unchanged."""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

import pytest

from api.jobs import model_source
from api.jsonio import MAX_JSON_DEPTH
from shared.errors import PathNotAllowed
from shared.logic.mining import MAX_SHARD_SIZE, MIN_SHARD_SIZE
from shared.ml.fitting import LIMITS
from tests.api.test_errors import error_of, job_count
from tests.helpers import wait_job


def post_raw(client: Any, path: str, raw: str | bytes) -> Any:
    return client.post(path, data=raw, content_type="application/json")


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999", "-1e400"])
@pytest.mark.parametrize(
    ("route", "template"),
    [
        ("/v1/jobs/train", '{"dataset": "ds-x", "lr": %s}'),
        ("/v1/datasets", '{"path": "ml-latest-small", "tags_per_movie": %s}'),
        ("/v1/recommendations", '{"liked": [1, %s]}'),
        ("/v1/jobs/encode", '{"texts": ["a"], "extra": {"deep": [%s]}}'),
    ],
)
def test_nan_and_infinity_are_400(client: Any, app: Any, route: str, template: str, literal: str) -> None:
    before = job_count(app)
    err = error_of(post_raw(client, route, template % literal), 400)
    assert err["code"] == "malformed_json"
    assert literal.lstrip("-") in err["message"]
    assert job_count(app) == before


@pytest.mark.parametrize(
    ("route", "raw", "field"),
    [
        ("/v1/datasets", '{"path": "ml-latest-small\\ud800"}', ["path"]),
        ("/v1/datasets", '{"path": "ml-latest-small", "genres_fix_csv": "\\udcff"}', ["genres_fix_csv"]),
        ("/v1/jobs/encode", '{"texts": ["ok", "\\udfff"]}', ["texts", "1"]),
        ("/v1/jobs/encode", '{"items": [["a"], ["b", "x\\ud83d"]]}', ["items", "1", "1"]),
        ("/v1/jobs/encode", '{"texts": ["a"], "model": "\\ud800/x"}', ["model"]),
        ("/v1/jobs/triplets", '{"dataset": "ds-\\ud800"}', ["dataset"]),
        ("/v1/recommendations", '{"keywords": ["war", "\\ude00"]}', ["keywords", "1"]),
        ("/v1/pipelines", '{"path": "ml-latest-small", "model": "m\\udc80"}', ["model"]),
        ("/v1/datasets", '{"path": "x", "\\ud800": 1}', ["\\ud800"]),
    ],
)
def test_lone_surrogates_are_400_naming_the_field(
    client: Any, app: Any, route: str, raw: str, field: list[str]
) -> None:
    """A lone surrogate is valid JSON but no UTF-8 encodes it: Redis, the filesystem and Celery would fail on
    it after the 202. Refused at the edge, naming the field as marshmallow names its own errors."""
    before = job_count(app)
    err = error_of(post_raw(client, route, raw), 400)
    assert err["code"] == "validation_error"
    assert err["message"].startswith("json." + ".".join(field) + ": ")
    leaf: Any = err["details"]["json"]
    for part in field:
        leaf = leaf[part]
    assert "surrogate" in leaf[0]
    assert job_count(app) == before


def test_paired_surrogates_and_any_unicode_round_trip(client: Any) -> None:
    """Astral characters (sent as a \\ud83d\\ude00 pair or as UTF-8), NUL, separators and bidi controls go
    through JSON, Redis, a Celery message and a real worker, and come back as they were sent."""
    name = "ml-latest-small/ünï \U0001f600 \u2028\u202e\x00\t 名前"
    raw = json.dumps({"path": name.replace("\x00", "")}, ensure_ascii=False).replace("\U0001f600", "\\ud83d\\ude00")
    r = post_raw(client, "/v1/datasets", raw.encode())
    assert r.status_code == 202, r.get_data(as_text=True)
    job = wait_job(lambda: client.get(f"/v1/jobs/{r.get_json()['id']}").get_json())
    assert job["status"] == "failed"
    assert job["error"]["message"] == f"{name.replace(chr(0), '')}: is not a directory"

    # NUL is a character like any other in a string that is not a path.
    err = error_of(client.post("/v1/jobs/triplets", json={"dataset": "ds-\x00é\U0001f600"}), 404)
    assert "ds-\\x00é\U0001f600" in err["message"]
    # A job id is a UUID (api/jobs.py): any other, however odd, names no route.
    odd_id = "id-é\U0001f600\u2028"
    assert error_of(client.get("/v1/jobs/" + urllib.parse.quote(odd_id)), 404)["code"] == "not_found"


@pytest.mark.parametrize(
    ("raw", "code", "words"),
    [
        ("[" * 100_000 + "]" * 100_000, "malformed_json", f"deeper than {MAX_JSON_DEPTH}"),
        ('{"path": ' + "[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1) + "}", "malformed_json", "deeper"),
        ('{"path": "x", "tags_per_movie": ' + "7" * 5000 + "}", "malformed_json", "4300 digits"),
        (b'{"path": "\xc0\xae\xc0\xae"}', "malformed_json", "not UTF-8"),  # overlong "..": not UTF-8
        (b'{"path": "\xff"}', "malformed_json", "not UTF-8"),
        ('{"path": "ml-latest-small"}'.encode("utf-16"), "malformed_json", "not UTF-8"),
        (b'\xef\xbb\xbf{"path": "ml-latest-small"}', "malformed_json", "not valid JSON"),  # a BOM
        ('{"path": "x",}', "malformed_json", "not valid JSON"),
    ],
)
def test_odd_bodies_are_400(client: Any, app: Any, raw: str | bytes, code: str, words: str) -> None:
    before = job_count(app)
    err = error_of(post_raw(client, "/v1/datasets", raw), 400)
    assert err["code"] == code and words in err["message"], err
    assert job_count(app) == before


def test_too_deep_names_the_limit(client: Any) -> None:
    err = error_of(post_raw(client, "/v1/datasets", "[" * 40 + "]" * 40), 400)
    assert err["details"] == {"max_depth": MAX_JSON_DEPTH}


_EPOCHS_MAX = int(LIMITS["epochs"][1])


@pytest.mark.parametrize(
    ("method", "route", "body", "field", "limit"),
    [
        ("POST", "/v1/jobs/encode", {"texts": ["a"] * 5001}, "json.texts", "5000"),
        ("POST", "/v1/jobs/encode", {"texts": ["a" * 1001]}, "json.texts.0", "1000"),
        ("POST", "/v1/jobs/encode", {"items": [["a"] * 101]}, "json.items.0", "100"),
        ("POST", "/v1/jobs/encode", {"texts": ["a"], "model": "m" * 257}, "json.model", "256"),
        ("POST", "/v1/recommendations", {"keywords": ["a"], "k": 101}, "json.k", "100"),
        ("POST", "/v1/recommendations", {"keywords": ["a"], "k": 0}, "json.k", "1"),
        ("POST", "/v1/recommendations", {"keywords": ["a"] * 21}, "json.keywords", "20"),
        ("POST", "/v1/recommendations", {"keywords": ["a" * 101]}, "json.keywords.0", "100"),
        ("POST", "/v1/recommendations", {"liked": [1] * 101}, "json.liked", "100"),
        ("POST", "/v1/recommendations", {"keywords": ["a"], "genres": ["g"] * 21}, "json.genres", "20"),
        ("POST", "/v1/jobs/train", {"dataset": "x", "epochs": _EPOCHS_MAX + 1}, "json.epochs", str(_EPOCHS_MAX)),
        ("POST", "/v1/jobs/train", {"dataset": "x", "lr": 0}, "json.lr", str(LIMITS["lr"][0])),
        ("POST", "/v1/jobs/triplets", {"dataset": "x", "shard_size": MAX_SHARD_SIZE + 1}, "json.shard_size",
         str(MAX_SHARD_SIZE)),
        ("POST", "/v1/jobs/triplets", {"dataset": "x", "shard_size": MIN_SHARD_SIZE - 1}, "json.shard_size",
         str(MIN_SHARD_SIZE)),
        ("POST", "/v1/datasets", {"path": "ml-latest-small", "tags_per_movie": 51}, "json.tags_per_movie", "50"),
        ("POST", "/v1/datasets", {"path": "a" * 4097}, "json.path", "4096"),
        ("POST", "/v1/pipelines", {"path": "x", "m": 257}, "json.m", "256"),
        ("POST", "/v1/jobs/index", {"version": "v", "ef": 5000}, "json.ef", "4096"),
        ("GET", "/v1/jobs?limit=501", None, "query.limit", "500"),
        ("GET", "/v1/datasets/ds-x/movies?limit=1001", None, "query.limit", "1000"),
        ("POST", "/v1/recommendations?wait=31", {"keywords": ["a"]}, "query.wait", "30"),
    ],
)  # fmt: skip
def test_every_limit_is_named(
    client: Any, app: Any, method: str, route: str, body: Any, field: str, limit: str
) -> None:
    before = job_count(app)
    r = client.post(route, json=body) if method == "POST" else client.get(route)
    err = error_of(r, 400)
    assert err["code"] == "validation_error"
    assert err["message"].startswith(f"{field}: ") and limit in err["message"], err
    leaf: Any = err["details"]
    for part in field.split("."):
        leaf = leaf[part]
    assert limit in leaf[0], err
    assert job_count(app) == before


def test_body_limit_is_named(client: Any, app: Any) -> None:
    limit = app.config["MAX_CONTENT_LENGTH"]
    err = error_of(post_raw(client, "/v1/jobs/encode", '{"texts": ["' + "a" * limit + '"]}'), 413)
    assert err["code"] == "payload_too_large"
    assert str(limit) in err["message"] and "MOVIEREC_MAX_BODY_BYTES" in err["message"]
    assert err["details"] == {"limit_bytes": limit}


@pytest.fixture
def links(settings: Any, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Inside the data root: a link to a directory inside it, and a link to a link that leaves it."""
    root = settings.data_root
    if not (root / "escape").is_symlink():  # the same link tests/api/test_errors.py makes
        (root / "escape").symlink_to(tmp_path_factory.mktemp("outside-root"))
    if not (root / "inside-link").is_symlink():
        (root / "inside-link").symlink_to(root / "ml-latest-small")
    if not (root / "chain").is_symlink():
        (root / "chain").symlink_to(root / "escape")


@pytest.mark.parametrize(
    "path",
    [
        "ml-latest-small\x00",
        "ml-latest-small/\x00/../..",
        "\x00",
        "../ml-latest-small",
        "ml-latest-small/../../etc/passwd",
        "/etc/passwd",
        "/",
        "//etc",
        "chain",
        "chain/ratings.csv",
        "inside-link/../../..",
    ],
)
def test_dataset_paths_that_leave_the_root_are_400(client: Any, app: Any, links: None, path: str) -> None:
    before = job_count(app)
    for body in ({"path": path}, {"path": "ml-latest-small", "genres_fix_csv": path}):
        err = error_of(client.post("/v1/datasets", json=body), 400)
        assert err["code"] == "path_not_allowed", err
    assert error_of(client.post("/v1/pipelines", json={"path": path}), 400)["code"] == "path_not_allowed"
    assert job_count(app) == before


@pytest.mark.parametrize("path", ["．．/．．/etc", "..%2f..%2fetc", "..\\..\\etc", "~/etc", "$HOME"])
def test_lookalike_paths_stay_literal_names_inside_the_root(client: Any, path: str) -> None:
    """Not decoded, expanded or normalised: a name that only looks like a way out is a missing directory."""
    r = client.post("/v1/datasets", json={"path": path})
    assert r.status_code == 202, r.get_data(as_text=True)
    job = wait_job(lambda: client.get(f"/v1/jobs/{r.get_json()['id']}").get_json())
    assert job["status"] == "failed" and job["error"]["message"] == f"{path}: is not a directory"


def test_a_link_that_stays_inside_the_root_is_accepted(client: Any, links: None) -> None:
    # Options of its own, so its dataset is not the session's ml-latest-small under another ``source``.
    r = client.post("/v1/datasets", json={"path": "inside-link", "tags_per_movie": 4})
    assert r.status_code == 202
    job = wait_job(lambda: client.get(f"/v1/jobs/{r.get_json()['id']}").get_json())
    assert job["status"] == "succeeded", job


@pytest.mark.parametrize("model", ["/etc", "../../../../etc", "a/../../../../../etc", "./../..", "/tmp/x\x00"])
def test_local_models_outside_the_data_root_are_400(client: Any, app: Any, model: str) -> None:
    before = job_count(app)
    bodies = [
        ("/v1/jobs/encode", {"texts": ["a"], "model": model}),
        ("/v1/jobs/train", {"dataset": "ds-unknown", "model": model}),
        ("/v1/pipelines", {"path": "ml-latest-small", "model": model}),
    ]
    for route, body in bodies:
        assert error_of(client.post(route, json=body), 400)["code"] == "path_not_allowed", route
    assert job_count(app) == before


def test_model_names(app: Any) -> None:
    root = app.extensions["movierec"].settings.data_root.resolve()
    with app.test_request_context():
        for hub in ("all-MiniLM-L6-v2", "bert-base-uncased", "sentence-transformers/all-MiniLM-L6-v2"):
            assert model_source(hub) == hub
        # Passed on exactly as given: each worker resolves it against its own data root (issue #14, finding 6).
        for local in ("./ml-latest-small", "ml-latest-small", "a/../ml-latest-small", str(root / "ml-latest-small")):
            assert model_source(local) == local
        for outside in ("org/../..", "a/b/c/../../../..", ".."):
            with pytest.raises(PathNotAllowed):
                model_source(outside)
