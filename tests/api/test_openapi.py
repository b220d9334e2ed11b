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
        if rule.rule in IGNORED or rule.endpoint.startswith("openapi"):
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
