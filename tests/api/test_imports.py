"""The API process validates, enqueues and reads: serving a request loads no pandas, scipy or torch."""

from __future__ import annotations

import json
import subprocess
import sys

from shared.infra.settings import Settings
from tests.helpers import REPO

HEAVY = ("pandas", "scipy", "torch", "transformers", "hnswlib", "safetensors")

PROBE = """
import json, sys
from api import create_app
from shared.infra.settings import Settings

client = create_app(settings=Settings.model_validate_json(sys.argv[1])).test_client()
statuses = [
    client.get("/healthz").status_code,
    client.get("/readyz").status_code,
    client.get("/openapi.json").status_code,
    client.get("/metrics").status_code,
    client.get("/v1/jobs").status_code,
    client.get("/v1/datasets").status_code,
    client.get("/v1/models").status_code,
    client.post("/v1/jobs/triplets", json={"dataset": "ds-none"}).status_code,
    client.post("/v1/recommendations", json={"keywords": ["war"]}).status_code,
    client.post("/v1/pipelines", json={"path": "nowhere", "epochs": 0}).status_code,
]
print(json.dumps({"statuses": statuses, "loaded": sorted(m for m in sys.argv[2:] if m in sys.modules)}))
"""


def test_serving_requests_loads_no_data_or_model_library(settings: Settings) -> None:
    own = settings.model_copy(update={"key_prefix": f"{settings.key_prefix}-imports"})
    out = subprocess.run(
        [sys.executable, "-c", PROBE, own.model_dump_json(), *HEAVY],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["statuses"][:7] == [200, 503, 200, 200, 200, 200, 200]  # no worker on this prefix: not ready
    assert all(400 <= s < 500 for s in report["statuses"][7:])  # refused at the edge, with a JSON error
    assert report["loaded"] == []


SEARCH_PROBE = """
import json, sys
from api import create_app
from shared.infra.settings import Settings

client = create_app(settings=Settings.model_validate_json(sys.argv[1])).test_client()
found = client.get("/v1/movies?q=toy%20story%201995")
answers = {
    "search": [found.status_code, [m["title"] for m in found.get_json()["movies"]]],
    "typing": client.get("/v1/movies?q=the%20matr&limit=2").get_json()["movies"][0]["title"],
    "bad": [client.get("/v1/movies?q=").status_code, client.get("/v1/movies?q=%21%21").status_code],
    "unknown movie": client.get("/v1/movies/99999999/similar").status_code,
}
print(json.dumps({"answers": answers, "loaded": sorted(m for m in sys.argv[2:] if m in sys.modules)}))
"""


def test_title_search_and_id_checks_load_no_data_or_model_library(settings: Settings) -> None:
    """With an active model: the search index is built and the similar route checks ids in the API process."""
    from shared.logic.ingest import DatasetOptions, ingest
    from shared.logic.services import Services
    from tests.conftest import delete_prefix

    own = settings.model_copy(update={"key_prefix": f"{settings.key_prefix}-imports-search"})
    svc = Services.from_settings(own)
    try:
        record, _ = ingest(
            svc.datasets,  # pandas, here in the test process: not in the probe's
            own.data_root / "ml-latest-small",
            DatasetOptions(tags_per_movie=5),
            source="s",
            progress=lambda *_: None,
        )
        svc.models.put({"version": "m-imports", "dataset": record["id"], "index": {"name": "probe"}})
        svc.models.activate("m-imports")
        out = subprocess.run(
            [sys.executable, "-c", SEARCH_PROBE, own.model_dump_json(), *HEAVY],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
    finally:
        delete_prefix(svc.redis, own.key_prefix)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["answers"] == {
        "search": [200, ["Toy Story (1995)"]],
        "typing": "Matrix, The (1999)",
        "bad": [400, 400],
        "unknown movie": 404,
    }
    assert report["loaded"] == []
