"""/openapi.json is a valid OpenAPI 3 document that documents every route the app serves."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

IGNORED = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc", "/static/<path:filename>"}


def test_spec_is_valid_and_covers_every_route(client: Any, app: Any) -> None:
    spec = client.get("/openapi.json").get_json()
    validate(spec)
    assert spec["openapi"].startswith("3.")
    served = set()
    for rule in app.url_map.iter_rules():
        # The dashboard's pages (api/ui.py) are HTML for people, not API operations.
        if rule.rule in IGNORED or rule.endpoint.startswith(("openapi", "ui.")):
            continue
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            served.add((path, method.lower()))
    documented = {(p, m) for p, ops in spec["paths"].items() for m in ops if m != "parameters"}
    assert served == documented


def test_error_responses_are_documented_with_the_envelope(client: Any) -> None:
    spec = client.get("/openapi.json").get_json()
    op = spec["paths"]["/v1/datasets"]["post"]
    assert {"202", "400", "413", "415"} <= set(op["responses"])
    schema = op["responses"]["400"]["content"]["application/json"]["schema"]
    ref = schema["$ref"].split("/")[-1]
    assert set(spec["components"]["schemas"][ref]["properties"]) == {"error"}


def test_bearer_scheme_is_declared_optional_when_the_api_is_open(client: Any) -> None:
    spec = client.get("/openapi.json").get_json()
    assert spec["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": spec["components"]["securitySchemes"]["bearerAuth"]["description"],
    }
    assert spec["security"] == [{"bearerAuth": []}, {}]  # {}: no key needed here
    assert spec["paths"]["/healthz"]["get"]["security"] == []
    assert all("401" not in op["responses"] for ops in spec["paths"].values() for op in ops.values())


def test_with_keys_every_operation_but_healthz_requires_one(settings: Any, stack: Any) -> None:
    from api import create_app

    key = "openapi-test-key-0123456789"
    app = create_app({"TESTING": True}, settings=settings.model_copy(update={"api_keys": (key,)}))
    spec = app.test_client().get("/openapi.json", headers={"Authorization": f"Bearer {key}"}).get_json()
    validate(spec)
    assert spec["security"] == [{"bearerAuth": []}]
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            if path == "/healthz":
                assert op["security"] == [] and "401" not in op["responses"]
            else:
                assert "security" not in op, (path, method)  # the document-wide requirement applies
                assert "WWW-Authenticate" in op["responses"]["401"]["headers"], (path, method)


def test_every_error_answer_is_documented_with_the_envelope(client: Any) -> None:
    """Each operation lists the refusals any of its kind can give, each with the error envelope."""
    spec = client.get("/openapi.json").get_json()
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            codes = set(op["responses"])
            if "requestBody" in op:
                assert {"400", "413", "415"} <= codes, (path, method)
            if path != "/healthz":
                assert "503" in codes, (path, method)
            for code, response in op["responses"].items():
                if code[0] in "45":
                    ref = response["content"]["application/json"]["schema"]["$ref"]
                    assert ref == "#/components/schemas/ErrorOut", (path, method, code)
    ok = spec["paths"]["/v1/recommendations"]["post"]["responses"]["200"]
    assert ok["content"]["application/json"]["schema"]["$ref"].endswith("/RecommendationsOut")


def _spec(app: Any) -> dict[str, Any]:
    spec: dict[str, Any] = app.test_client().get("/openapi.json").get_json()
    return spec


def _component(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def _objects(spec: dict[str, Any], schema: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every object schema a body may hold, $refs followed: each oneOf branch, each nested object."""
    schema = _component(spec, schema)
    for branch in schema.get("oneOf", []):
        yield from _objects(spec, branch)
    if "properties" in schema:
        yield schema
        for prop in schema["properties"].values():
            yield from _objects(spec, prop.get("items", prop))


def _bodies(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            for media, content in op.get("requestBody", {}).get("content", {}).items():
                yield f"{method.upper()} {path} ({media})", media, content["schema"]


def test_every_request_body_is_closed_and_required(app: Any) -> None:
    """Each object a body may hold refuses unknown fields, as the server's schemas do (marshmallow's RAISE), and
    every body is required: none of them accepts an empty object."""
    spec = _spec(app)
    bodies = list(_bodies(spec))
    assert len(bodies) >= 11, bodies
    for where, _, schema in bodies:
        objects = list(_objects(spec, schema))
        assert objects, where
        for obj in objects:
            assert obj.get("additionalProperties") is False, (where, sorted(obj["properties"]))
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            if "requestBody" in op:
                assert op["requestBody"].get("required") is True, (method, path)


def test_train_requires_a_body(app: Any) -> None:
    spec = _spec(app)
    body = spec["paths"]["/v1/jobs/train"]["post"]["requestBody"]
    assert body["required"] is True
    assert _component(spec, body["content"]["application/json"]["schema"])["required"] == ["dataset"]
    assert app.test_client().post("/v1/jobs/train").status_code == 400


@pytest.mark.parametrize(
    ("name", "groups"),
    [
        ("RecommendIn", [{"user_id"}, {"keywords"}, {"liked", "disliked"}]),
        ("EncodeIn", [{"dataset"}, {"texts"}, {"items"}]),
        ("PipelineIn", [{"path"}, {"dataset"}]),
        ("EvaluateIn", [{"path"}, {"dataset"}]),
    ],
)
def test_exactly_one_of_is_a_one_of_of_closed_alternatives(app: Any, name: str, groups: list[set[str]]) -> None:
    """Each alternative: the shared fields and its own, closed, its own required (one of liked/disliked)."""
    spec = _spec(app)
    schema = spec["components"]["schemas"][name]
    assert "properties" not in schema and len(schema["oneOf"]) == len(groups)
    grouped = set().union(*groups)
    for group, branch in zip(groups, schema["oneOf"], strict=True):
        assert branch["additionalProperties"] is False
        assert set(branch["properties"]) & grouped == group
        needed = set(branch.get("required", [])) | {n for alt in branch.get("anyOf", []) for n in alt["required"]}
        assert group <= needed, (name, group, branch)


@pytest.mark.parametrize(
    ("name", "body"),
    [
        ("RecommendIn", {"user_id": 1}),
        ("RecommendIn", {"keywords": ["war"], "k": 5}),
        ("RecommendIn", {"liked": [1], "disliked": []}),
        ("RecommendIn", {"liked": [], "disliked": [2]}),
        ("RecommendIn", {"liked": [], "disliked": []}),
        ("RecommendIn", {"user_id": 1, "liked": []}),
        ("RecommendIn", {"user_id": 1, "keywords": ["war"]}),
        ("RecommendIn", {}),
        ("RecommendIn", {"user_id": 1, "error": {}}),
        ("RecommendIn", {"user_id": 2.0}),
        ("RecommendIn", {"user_id": 2.5}),
        ("RecommendIn", {"user_id": "2"}),
        ("RecommendIn", {"user_id": 1, "exclude_seen": 1}),
        ("EncodeIn", {"texts": ["a"]}),
        ("EncodeIn", {"texts": ["a"], "dataset": "d"}),
        ("EncodeIn", {"model": "m"}),
        ("PipelineIn", {"path": "ml-latest-small"}),
        ("PipelineIn", {"path": "ml", "dataset": "d"}),
        ("PipelineIn", {"dataset": "d", "margin": 0.0}),
        ("EvaluateIn", {"dataset": "d", "recipes": [], "baselines": []}),
        ("EvaluateIn", {"dataset": "d", "recipes": []}),
        ("EvaluateIn", {"dataset": "d", "baselines": ["random", "random"]}),
        ("EvaluateIn", {"dataset": "d", "train_fraction": 1.0}),
        ("TrainIn", {"dataset": "d"}),
        ("TrainIn", {}),
        ("RecommendBatchIn", {"users": [1, 2.0]}),
        ("RecommendBatchIn", {"users": [1, 2.5]}),
        ("RatingsIn", {"ratings": [{"user_id": 1, "movie_id": 1, "rating": 4.5, "extra": 1}]}),
    ],
)
def test_the_spec_and_the_server_accept_the_same_bodies(app: Any, name: str, body: dict[str, Any]) -> None:
    """One definition: a body valid by the component in /openapi.json is one the schema's validator loads, and
    an invalid one is refused by both."""
    from api import schemas

    spec = _spec(app)
    validator = Draft202012Validator({"$ref": f"#/components/schemas/{name}", "components": spec["components"]})
    by_spec = validator.is_valid(body)
    by_server = not getattr(schemas, name)().validate(body)
    assert by_spec == by_server, (name, body, by_spec, getattr(schemas, name)().validate(body))


def _sample_url(path: str) -> str:
    samples = {"job_id": str(uuid.uuid4()), "movie_id": "1", "user_id": "1"}
    return re.sub(r"\{([^}]+)\}", lambda m: samples.get(m.group(1), "x"), path)


def test_allow_lists_only_the_methods_of_each_path(app: Any) -> None:
    """OPTIONS (and so a 405's Allow) names the methods the spec documents for the path, and no other: a
    job route does not take /v1/jobs/encode for a job id."""
    spec = _spec(app)
    client = app.test_client()
    for path, ops in spec["paths"].items():
        documented = {m.upper() for m in ops if m != "parameters"}
        allowed = set(client.options(_sample_url(path)).headers["Allow"].split(", "))
        expected = documented | {"OPTIONS"} | ({"HEAD"} if "GET" in documented else set())
        assert allowed == expected, (path, allowed)
    for route in ("encode", "index", "train", "triplets", "evaluate", "recommend-batch"):
        response = client.get(f"/v1/jobs/{route}")
        assert response.status_code == 405, route
        assert set(response.headers["Allow"].split(", ")) == {"OPTIONS", "POST"}, route


def test_delete_of_a_job_says_it_cancels_and_every_error_has_an_example(app: Any) -> None:
    spec = _spec(app)
    delete = spec["paths"]["/v1/jobs/{job_id}"]["delete"]
    assert "does not delete" in delete["description"] and "stays readable" in delete["description"]
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            for code, response in op["responses"].items():
                if code[0] in "45":
                    example = response["content"]["application/json"]["example"]
                    assert set(example["error"]) == {"code", "message", "details"}, (method, path, code)


def test_a_result_without_an_array_answers_409_no_such_form(app: Any) -> None:
    """?format=npy is offered for every job; one that produced no array refuses it as a conflict with its state
    (409), as the spec says, not as an invalid request."""
    svc = app.extensions["movierec"]
    job = svc.jobs.create("ingest", {"path": "ml-latest-small"})
    svc.jobs.succeed(job.id, {"dataset": "d", "reused": True})
    client = app.test_client()
    for fmt in ("npy", "csv"):
        response = client.get(f"/v1/jobs/{job.id}/result?format={fmt}")
        assert response.status_code == 409 and response.get_json()["error"]["code"] == "no_such_form", fmt
    responses = _spec(app)["paths"]["/v1/jobs/{job_id}/result"]["get"]["responses"]
    assert "no_such_form" in responses["409"]["description"]


def test_each_schema_is_one_component(client: Any) -> None:
    """A schema both nested and a view's output is one component, so a generated client has one type for it."""
    spec = client.get("/openapi.json").get_json()
    schemas = spec["components"]["schemas"]
    assert {"JobOut", "DatasetOut"} <= set(schemas)
    assert not [name for name in schemas if name[-1].isdigit() and name.rstrip("0123456789") in schemas]
    refs = re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', json.dumps(spec))
    assert set(refs) <= set(schemas)
