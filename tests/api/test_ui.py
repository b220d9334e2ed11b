"""The dashboard's pages as the server sends them (the browser tests in tests/ui drive them): open without a key,
hardened headers, files from this package only, and a script that never writes HTML."""

from __future__ import annotations

import re
from typing import Any

import pytest

from api import ui
from shared.infra.settings import Settings
from tests.helpers import REPO

STATIC = REPO / "api" / "static"


@pytest.fixture(scope="module")
def keyed(settings: Settings) -> Any:
    from api import create_app

    app = create_app({"TESTING": True}, settings=settings.model_copy(update={"api_keys": ("k" * 24,)}))
    return app.test_client()


@pytest.mark.parametrize(
    "path", ["/ui/", "/ui/jobs", "/ui/models", "/ui/try", "/ui/map", "/ui/experiments", "/ui/experiments/any-name"]
)
def test_every_page_is_open_and_hardened(keyed: Any, path: str) -> None:
    r = keyed.get(path)  # no key: a page holds no data, and asks for a key before it calls the API
    assert r.status_code == 200 and r.mimetype == "text/html"
    csp = r.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    html = r.get_data(as_text=True)
    assert 'src="/ui/static/app.js"' in html and "<script>" not in html  # no inline script for the CSP to allow
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)  # nothing from another origin


def test_the_data_behind_the_pages_still_needs_a_key(keyed: Any) -> None:
    assert keyed.get("/v1/system").status_code == 401
    assert keyed.get("/v1/jobs").status_code == 401
    assert "X-Movierec-Role" not in keyed.get("/v1/jobs").headers


def test_every_answer_to_a_key_names_its_role(keyed: Any) -> None:
    r = keyed.get("/v1/jobs", headers={"Authorization": "Bearer " + "k" * 24})
    assert r.status_code == 200 and r.headers["X-Movierec-Role"] == "admin"


def test_unknown_pages_and_files_are_json_404s(keyed: Any) -> None:
    for path in ("/ui/nope", "/ui/static/nope.js", "/ui/static/../__init__.py"):
        r = keyed.get(path)
        assert r.status_code == 404 and r.get_json()["error"]["code"] == "not_found", path


def test_static_files_are_served_from_the_package(keyed: Any) -> None:
    for name, mimetype in (("app.js", "text/javascript"), ("style.css", "text/css")):
        r = keyed.get(f"/ui/static/{name}")
        assert r.status_code == 200 and r.mimetype == mimetype
        assert r.data == (STATIC / name).read_bytes()


def test_the_script_never_writes_html_and_renders_every_page() -> None:
    script = (STATIC / "app.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in script, f"app.js uses {sink}: put text in with el()/textContent"
    assert not re.search(r"https?://", script)
    for page in ui.PAGES:
        assert f"{page or 'overview'}: render" in script
