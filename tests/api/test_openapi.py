"""/openapi.json is a valid OpenAPI 3 document that documents every route the app serves."""

from __future__ import annotations

import re
from typing import Any

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
