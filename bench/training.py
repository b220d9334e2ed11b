"""Training and per-query benchmarks against the notebook's ways, same inputs, same machine, one after the other.

    python -m bench.training [--epochs 10] [--queries 20] [--repeat 5]

Inputs: ml-latest-small, its uniform-min triplets (seed 42) and the bundled all-MiniLM-L6-v2 (cls).

A. Training, same triplets, same split, same epochs and hyper-parameters:
   - notebook: a Python generator yields batches as lists of vectors; each batch becomes tensors with
     ``torch.tensor(np.array(list))``; forward, loss, step;
   - movierec: ``shared.ml.training.train`` (batches are index tensors into one tensor of all movies).
B. Recommendations for a user:
   - notebook: re-encode every movie the user rated (one descriptor string per forward pass, mean per
     movie), weight by rating / 5, project, then fit a brute-force k-NN over all movies and query it;
   - movierec: ``shared.ml.recommend`` on a loaded model: profile from stored vectors, hnswlib query.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from shared.ml.fitting import TrainConfig

from .common import machine

if TYPE_CHECKING:
    import torch

REPO = Path(__file__).resolve().parents[1]
SMALL = REPO.parent / "shared" / "data" / "ml-latest-small"


Batch = tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]


def notebook_train(
    vectors: np.ndarray, triplets: np.ndarray, train_idx: np.ndarray, cfg: TrainConfig
) -> torch.nn.Module:
    import torch

    from shared.ml.siamese import build_net, triplet_loss

    torch.manual_seed(cfg.seed)
    net = build_net(vectors.shape[1], cfg.hidden_dim)
    optimiser = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    rng = np.random.default_rng(cfg.seed)

    def batches() -> Iterator[Batch]:
        order = rng.permutation(train_idx)
        for start in range(0, len(order), cfg.batch_size):
            chunk = triplets[order[start : start + cfg.batch_size]]
            yield (
                [vectors[a] for a in chunk[:, 0]],
                [vectors[p] for p in chunk[:, 1]],
                [vectors[n] for n in chunk[:, 2]],
            )

    for _ in range(cfg.epochs):
        for anchors, positives, negatives in batches():
            a = net(torch.tensor(np.array(anchors)))
            p = net(torch.tensor(np.array(positives)))
            n = net(torch.tensor(np.array(negatives)))
            loss = triplet_loss(a, p, n, cfg.margin)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return net


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=5, help="training runs of each, alternating which goes first")
    args = parser.parse_args()

    import torch

    from shared.ml.encoder import load_encoder, mean_by_rows
    from shared.ml.fitting import split, triplet_auc
    from shared.ml.index import IndexParams, MovieIndex
    from shared.ml.mining import build_incidence, mine_range
    from shared.ml.movielens import read_catalogue, read_ratings
    from shared.ml.training import train

    print(machine(f"torch {torch.__version__}", f"{torch.get_num_threads()} threads"))
    catalogue = read_catalogue(SMALL, tags_per_movie=5)
    ratings = read_ratings(SMALL / "ratings.csv", catalogue.movie_ids)
    inc = build_incidence(catalogue.desc_indptr, catalogue.desc_indices, catalogue.vocabulary)
    triplets = mine_range(inc, 0, inc.n, seed=42, strategy="uniform-min").triplets.astype(np.int64)
    encoder = load_encoder("all-MiniLM-L6-v2", "cls", torch.device("cpu"))
    vectors = mean_by_rows(catalogue.desc_indptr, catalogue.desc_indices, encoder.encode_uncached(catalogue.vocabulary))
    config = TrainConfig(epochs=args.epochs)
    train_idx, test_idx = split(len(triplets), test_fraction=config.test_fraction, seed=config.seed)

    ratios = []
    for run in range(args.repeat):  # alternate which goes first, so neither always meets a cold machine
        timings = {}
        for name in ("movierec", "notebook") if run % 2 == 0 else ("notebook", "movierec"):
            start = time.perf_counter()
            if name == "movierec":
                ours = train(vectors, triplets, config, device=torch.device("cpu"))
            else:
                net = notebook_train(vectors, triplets, train_idx, config)
            timings[name] = time.perf_counter() - start
        with torch.inference_mode():
            projected = net(torch.from_numpy(vectors)).numpy()  # (n, hidden), already unit length
        auc_notebook = triplet_auc(projected, triplets[test_idx])
        ratios.append(timings["notebook"] / timings["movierec"])
        print(f"training run {run + 1}, {len(triplets):,} triplets, {config.epochs} epochs, batch {config.batch_size}: "
              f"notebook {timings['notebook']:.2f} s (test AUC {auc_notebook:.4f}), movierec "
              f"{timings['movierec']:.2f} s (test AUC {ours.auc_after:.4f}): {ratios[-1]:.1f}x")  # fmt: skip
    print(f"training: median {statistics.median(ratios):.1f}x over {len(ratios)} runs, lowest {min(ratios):.1f}x")

    # B: recommendations for users 1..queries
    weight, bias = ours.state["proj.weight"].numpy(), ours.state["proj.bias"].numpy()
    index = MovieIndex.build(ours.projected, IndexParams())

    def project(x: np.ndarray) -> np.ndarray:
        y = x @ weight.T + bias
        return np.asarray(y / np.linalg.norm(y, axis=-1, keepdims=True))

    def notebook_query(j: int) -> list[int]:
        rows = ratings.movie_index[ratings.indptr[j] : ratings.indptr[j + 1]]
        values = ratings.values[ratings.indptr[j] : ratings.indptr[j + 1]]
        with torch.inference_mode():
            movie_vecs = []
            for r in rows:  # re-encode each rated movie, one descriptor per forward pass
                per = [
                    encoder.model(**encoder.tokenizer(d, return_tensors="pt")).last_hidden_state[0][0].numpy()
                    for d in catalogue.descriptors(int(r))
                ]
                movie_vecs.append(np.mean(per, axis=0))
        profile = project((np.array(movie_vecs) * (values[:, None] / 5.0)).sum(0) / (values / 5.0).sum())
        fitted = ours.projected.copy()  # "fit" a brute-force k-NN on every call
        scores = fitted @ profile
        seen = set(rows.tolist())
        return [int(r) for r in np.argsort(-scores) if r not in seen][:10]

    def our_query(j: int) -> list[int]:
        rows = ratings.movie_index[ratings.indptr[j] : ratings.indptr[j + 1]]
        values = ratings.values[ratings.indptr[j] : ratings.indptr[j + 1]] / 5.0
        profile = project((values[:, None] * vectors[rows]).sum(0) / values.sum())
        allowed = np.ones(len(vectors), dtype=bool)
        allowed[rows] = False
        found: list[int] = index.query(profile, 10, allowed=allowed)[0].tolist()
        return found

    users = list(range(args.queries))
    start = time.perf_counter()
    for j in users:
        our_query(j)
    t_q_ours = (time.perf_counter() - start) / len(users)
    start = time.perf_counter()
    for j in users:
        notebook_query(j)
    t_q_notebook = (time.perf_counter() - start) / len(users)
    print(f"recommendation by user id ({len(users)} users): notebook {t_q_notebook * 1000:.0f} ms per query, "
          f"movierec {t_q_ours * 1000:.2f} ms per query: {t_q_notebook / t_q_ours:,.0f}x")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
