"""``movierec demo``: the main job, on the real ml-latest-small and offline on a generated sample."""

from __future__ import annotations

import http.server
import re
import signal
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest
import requests

from cli.demo import OFFLINE_SAMPLE, _download_small, find_demo_data
from cli.stack import free_port
from shared.infra.defaults import DEFAULT_TAGS_PER_MOVIE
from shared.infra.settings import Settings
from shared.ml.movielens import read_catalogue, read_ratings
from tests.helpers import REPO, SMALL, embedded_env


def test_demo_runs_the_embedded_stack_prints_figures_and_serves_the_dashboard(
    settings: Settings, tmp_path: Path
) -> None:
    env = embedded_env(settings, tmp_path)
    port = free_port()
    demo = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "demo", "--data", str(SMALL), "--data-dir", str(tmp_path / "demo"),
         "--cpu-workers", "1", "--serve", "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
    )  # fmt: skip
    try:
        assert demo.stdout is not None
        lines = []
        for line in demo.stdout:  # until the demo has printed everything and stays up
            lines.append(line)
            if "Ctrl-C stops the stack" in line:
                break
        out = "".join(lines)
        assert "movies kept" in out and "9,709" in out and "100,836" in out, out
        assert "test ROC AUC after training" in out
        assert re.search(r"recipe (hybrid|ials)\n  chosen: \S+.* scored the best validation objective", out), out
        # The evaluation table: every baseline at its default and the recipes auto chose among, beside the seed's.
        assert re.search(r"evaluation of ds-\w+ \(trained on ds-\w+\): 508 users evaluated; per-user temporal", out)
        rows = re.findall(r"^(\S+)(?: \S+=\S+)* +(baseline|recipe) +\d", out, flags=re.MULTILINE)
        table = dict(rows)
        assert len(rows) == len(table) == 9, out
        assert table == {"random": "baseline", "most-popular": "baseline", "item-kNN": "baseline",
                         "EASE": "baseline", "RP3beta": "baseline", "iALS": "baseline", "seed": "recipe",
                         "hybrid": "recipe", "ials": "recipe"}, out  # fmt: skip
        for title in (
            r"user 1 \((light-)?profile\):",  # a light user's answer when the chosen setting has a prior
            r"user 2 \((light-)?profile\):",
            r"user 3 \((light-)?profile\):",
            r"keywords \['Children', 'family', 'animation'\] \(keywords\):",
            r"keywords \['war', 'violence', 'drama'\] \(keywords\):",
        ):
            assert re.search(f"recommendations for {title}", out), title
        assert out.count("top descriptors of these") == 5 and out.count("top descriptors of the user's history") == 3
        assert f"dashboard: http://127.0.0.1:{port}/ui/" in out
        page = requests.get(f"http://127.0.0.1:{port}/ui/", timeout=10)
        assert page.status_code == 200 and "movierec" in page.text
        system = requests.get(f"http://127.0.0.1:{port}/v1/system", timeout=10).json()
        assert system["active_model"] is not None and all(q["workers"] for q in system["queues"])
        demo.send_signal(signal.SIGINT)
        assert demo.wait(timeout=60) == 0
    finally:
        if demo.poll() is None:
            demo.kill()


def test_offline_the_demo_generates_a_movielens_sample(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No data named and nothing downloadable: the demo runs on a generated sample in MovieLens format (the same
    stack and pipeline as above, which ``movierec synth``'s tests also ingest and train on)."""
    monkeypatch.delenv("MOVIEREC_DEMO_DATA", raising=False)
    monkeypatch.setenv("MOVIEREC_DEMO_URL", f"http://127.0.0.1:{free_port()}/ml-latest-small.zip")  # nothing listens
    found = find_demo_data(None, cache=tmp_path / "cache")
    written = found.path.joinpath("ratings.csv").stat().st_mtime_ns
    assert "generated sample" in found.origin and found.path == tmp_path / "cache" / "synthetic-sample"
    catalogue = read_catalogue(found.path, tags_per_movie=DEFAULT_TAGS_PER_MOVIE)
    ratings = read_ratings(found.path / "ratings.csv", catalogue.movie_ids)
    assert ratings.rows_read == OFFLINE_SAMPLE.ratings and len(ratings.user_ids) == OFFLINE_SAMPLE.users
    assert ratings.kept > 0.9 * ratings.rows_read  # rated movies have descriptors
    again = find_demo_data(None, cache=tmp_path / "cache")  # generated once, then reused
    assert again == found and again.path.joinpath("ratings.csv").stat().st_mtime_ns == written


def test_download_is_checked_as_a_zip_with_the_expected_files(tmp_path: Path) -> None:
    served = tmp_path / "served"
    served.mkdir()
    with zipfile.ZipFile(served / "good.zip", "w") as z:
        for f in SMALL.iterdir():
            z.write(f, f"ml-latest-small/{f.name}")
    with zipfile.ZipFile(served / "bad.zip", "w") as z:
        z.writestr("ml-latest-small/movies.csv", "movieId,title,genres\n")

    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(served))  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with pytest.raises(ValueError, match=r"lacks ratings\.csv"):
            _download_small(f"{base}/bad.zip", tmp_path / "cache-bad")
        got = _download_small(f"{base}/good.zip", tmp_path / "cache")
        assert (got / "ratings.csv").read_bytes() == (SMALL / "ratings.csv").read_bytes()
    finally:
        server.shutdown()
