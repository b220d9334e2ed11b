"""The API process validates, enqueues and reads: serving a request loads no pandas, scipy or torch."""

from __future__ import annotations

import json
import subprocess
import sys

from shared.infra.settings import Settings
from tests.conftest import REPO

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
