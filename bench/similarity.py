"""item-kNN's and RP3beta's similarity builds (shared/ml/baselines.py) against another revision's, side by side.

    python -m bench.similarity [--data DIR] [--users N[,N...]] [--baseline-rev REV] [--repeat R]

Data: a MovieLens directory's ratings.csv (default ml-latest-small), every rating a 1 (what both baselines see),
then N users drawn with a fixed seed (0 = all of them). Each build is the setting the 27M evaluation chose on
validation (item-kNN k=200 shrink=100, RP3beta alpha=0.5 beta=0 k=200 normalize=1), fitted by this tree and by
``--baseline-rev``'s ``shared/ml/baselines.py`` (read with ``git show``, imported beside this tree: default
f3f4ace, scipy's sparse product with its rows laid out for ranking), in alternating order, ``--repeat`` times;
it prints the median seconds of each, their ratio, and whether the two similarity matrices are the same bits.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import scipy.sparse as sp

from shared.ml import baselines

from .common import REPO, machine

SMALL = REPO.parent / "shared" / "data" / "ml-latest-small"
SETTINGS = {
    "item-kNN": {"k": 200, "shrink": 100.0},
    "RP3beta": {"alpha": 0.5, "beta": 0.0, "k": 200, "normalize": 1},
}


def rated(data: Path, users: int) -> sp.csr_matrix:
    """(users, movies) float32 1/0 CSR of who rated what; ``users`` drawn with seed 0 (0: everyone)."""
    frame = pd.read_csv(data / "ratings.csv", usecols=["userId", "movieId"])
    user, movie = pd.factorize(frame.userId)[0], pd.factorize(frame.movieId)[0]
    x = sp.csr_matrix((np.ones(len(user), np.float32), (user, movie)))
    x.sum_duplicates()
    x.data[:] = 1.0
    if 0 < users < x.shape[0]:
        x = x[np.sort(np.random.default_rng(0).choice(x.shape[0], users, replace=False))]
    return x


def revision(rev: str, out: Path, module: str = "shared/ml/baselines.py") -> ModuleType:
    """``module`` (a path in the repository) as it was at ``rev``, imported under another name (its imports
    resolve in this tree)."""
    source = subprocess.run(["git", "show", f"{rev}:{module}"], cwd=REPO, check=True,
                            capture_output=True, text=True).stdout  # fmt: skip
    name = f"{Path(module).stem}_{rev}"
    path = out / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    loaded = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = loaded  # its dataclasses look their module up there
    spec.loader.exec_module(loaded)
    return loaded


def same_bits(a: sp.csr_matrix, b: sp.csr_matrix) -> bool:
    return all(np.array_equal(getattr(a, f), getattr(b, f)) for f in ("indptr", "indices", "data"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SMALL)
    parser.add_argument("--users", default="0", help="comma-separated user counts, 0 = all")
    parser.add_argument("--baseline-rev", default="f3f4ace")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    print(machine(f"data {args.data}, baseline {args.baseline_rev}, one process"))
    baselines.fit("item-kNN", rated(SMALL, 50), SETTINGS["item-kNN"], seed=0, max_bytes=0)  # compiled once, first
    with tempfile.TemporaryDirectory() as tmp:
        before = revision(args.baseline_rev, Path(tmp))
        print("| users | ratings | build | this tree (s) | baseline (s) | speed-up | same bits |")
        print("|---|---|---|---|---|---|---|")
        for users in (int(u) for u in args.users.split(",")):
            x = rated(args.data, users)
            for name, setting in SETTINGS.items():
                times: dict[str, list[float]] = {"this": [], "before": []}
                built = {}
                for _ in range(args.repeat):
                    for label, module in (("this", baselines), ("before", before)):
                        started = time.perf_counter()
                        built[label] = module.fit(name, x, setting, seed=0, max_bytes=0).similarity
                        times[label].append(time.perf_counter() - started)
                now, then = statistics.median(times["this"]), statistics.median(times["before"])
                print(f"| {x.shape[0]:,} | {x.nnz:,} | {baselines.label(name, setting)} | {now:.1f} | {then:.1f} | "
                      f"{then / now:.1f}x | {same_bits(built['this'], built['before'])} |")  # fmt: skip
                sys.stdout.flush()


if __name__ == "__main__":
    main()
