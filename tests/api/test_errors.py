"""Every error is a JSON envelope with the right status; nothing is enqueued for a refused request."""

from __future__ import annotations

from typing import Any

import pytest

from api.context import services as api_services


def error_of(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.is_json
    body = response.get_json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}
    assert "Traceback" not in response.get_data(as_text=True)
    return dict(body["error"])


def job_count(app: Any) -> int:
    """Jobs a request made: a pipeline's steps, which an earlier test's pipeline may still be enqueueing in the
    background, are left out (counting them failed CI)."""
    with app.app_context():
        return sum("parent" not in job.params for job in api_services().jobs.list(limit=500))


def test_malformed_json_is_400(client: Any) -> None:
    r = client.post("/v1/datasets", data='{"path":', content_type="application/json")
    assert error_of(r, 400)["code"] == "malformed_json"


def test_wrong_content_type_is_415(client: Any) -> None:
    r = client.post("/v1/datasets", data="path=x", content_type="application/x-www-form-urlencoded")
    assert error_of(r, 415)["code"] == "unsupported_media_type"


def test_unknown_fields_are_400(client: Any) -> None:
    err = error_of(client.post("/v1/datasets", json={"path": "ml-latest-small", "bogus": 1}), 400)
    assert err["code"] == "validation_error"
    assert err["details"]["json"]["bogus"] == ["Unknown field."]


def test_an_unknown_field_deep_in_a_plain_list_is_400_naming_it(client: Any) -> None:
    # The strict check leaves a PlainList's items to the list itself, which hands a list it cannot pass plainly to
    # marshmallow: the same answer, named at the item.
    events = [{"type": "click", "user_id": 1, "movie_id": 1} for _ in range(5)]
    events[3]["bogus"] = 1
    err = error_of(client.post("/v1/events", json={"events": events}), 400)
    assert err["code"] == "validation_error"
    assert err["details"]["json"] == {"events": {"3": {"bogus": ["Unknown field."]}}}


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"path": 3},
        {"path": ""},
        {"path": "ml-latest-small", "tags_per_movie": 0},
        {"path": "x", "tags_per_movie": 51},
        [1],
    ],
)
def test_invalid_bodies_are_400(client: Any, body: Any) -> None:
    assert error_of(client.post("/v1/datasets", json=body), 400)["code"] == "validation_error"


def test_oversize_body_is_413(client: Any, app: Any) -> None:
    limit = app.config["MAX_CONTENT_LENGTH"]
    r = client.post("/v1/datasets", data='{"path": "' + "a" * limit + '"}', content_type="application/json")
    assert error_of(r, 413)["code"] == "payload_too_large"


def test_unknown_job_and_route_are_404(client: Any) -> None:
    assert error_of(client.get("/v1/jobs/no-such-job"), 404)["code"] == "not_found"
    assert error_of(client.get("/v1/jobs/no-such-job/result"), 404)["code"] == "not_found"
    assert error_of(client.delete("/v1/jobs/no-such-job"), 404)["code"] == "not_found"
    assert error_of(client.get("/v1/datasets/ds-nope"), 404)["code"] == "not_found"
    assert error_of(client.get("/v1/nothing-here"), 404)["code"] == "not_found"
    assert error_of(client.put("/v1/jobs"), 405)["code"] == "method_not_allowed"


def test_result_of_an_unfinished_job_is_409_and_cancel_works(client: Any, app: Any) -> None:
    with app.app_context():
        job = api_services().jobs.create("ingest", {"path": "never-sent"})  # queued, no message
    err = error_of(client.get(f"/v1/jobs/{job.id}/result"), 409)
    assert err["code"] == "job_not_finished"
    r = client.delete(f"/v1/jobs/{job.id}")
    assert r.status_code == 200 and r.get_json()["status"] == "cancelled"
    assert error_of(client.delete(f"/v1/jobs/{job.id}"), 409)["code"] == "conflict"
    assert error_of(client.get(f"/v1/jobs/{job.id}/result"), 409)["details"] == {"status": "cancelled"}


@pytest.mark.parametrize(
    "path", ["..", "../..", "/etc", "/", "ml-latest-small/../../..", "escape", "escape/ratings.csv"]
)
def test_paths_outside_the_data_root_are_400_before_enqueueing(client: Any, app: Any, path: str) -> None:
    before = job_count(app)
    err = error_of(client.post("/v1/datasets", json={"path": path}), 400)
    assert err["code"] == "path_not_allowed"
    assert str(app.extensions["movierec"].settings.data_root) not in err["message"]
    err = error_of(client.post("/v1/datasets", json={"path": "ml-latest-small", "genres_fix_csv": path}), 400)
    assert err["code"] == "path_not_allowed"
    assert job_count(app) == before


@pytest.fixture(autouse=True)
def _escaping_symlink(settings: Any, tmp_path_factory: pytest.TempPathFactory) -> None:
    link = settings.data_root / "escape"
    if not link.is_symlink():
        link.symlink_to(tmp_path_factory.mktemp("outside-root"))


def test_list_query_is_validated(client: Any) -> None:
    assert error_of(client.get("/v1/jobs?limit=0"), 400)["code"] == "validation_error"
    assert error_of(client.get("/v1/jobs?status=bogus"), 400)["code"] == "validation_error"
    assert error_of(client.get("/v1/jobs?format=npy"), 400)["code"] == "validation_error"


def test_healthz(client: Any) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200 and r.get_json() == {"status": "ok"}


def test_metrics_are_prometheus_text(client: Any) -> None:
    r = client.get("/metrics")
    assert r.status_code == 200
    text = r.get_data(as_text=True)
    assert 'movierec_queue_length{queue="cpu"}' in text
    assert 'movierec_workers{queue="gpu"} 1' in text
    assert "# TYPE movierec_jobs_indexed gauge" in text
