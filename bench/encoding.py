"""Encoding benchmark: the notebook's one-string-per-forward-pass loop against ours, same model, same input.

    python -m bench.encoding [--model all-MiniLM-L6-v2] [--pooling cls]

Input: ml-latest-small's descriptors (24,884 strings over 9,709 movies, 1,218 unique). Both sides load the
model from disk inside the timed region and produce the same (movies, dim) matrix, a movie being the mean
of its descriptors' vectors:

- notebook: for every movie, for every descriptor, tokenize it alone and run one forward pass
  (``torch.no_grad``, which is kinder to it than the notebook was), take the first token of the last layer;
- movierec: ``load_encoder`` then each unique string once, in length-sorted batches, then a sparse mean.

Library imports (torch, transformers) happen before either clock starts and are reported on their own.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .common import machine

REPO = Path(__file__).resolve().parents[1]
SMALL = REPO.parent / "shared" / "data" / "ml-latest-small"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    parser.add_argument("--pooling", default="cls", choices=["cls"])
    args = parser.parse_args()

    started = time.perf_counter()
    import numpy as np
    import torch
    import transformers
    from transformers import AutoModel, AutoTokenizer

    from shared.ml.encoder import load_encoder, mean_by_rows, resolve_model
    from shared.ml.movielens import read_catalogue

    transformers.utils.logging.disable_progress_bar()
    AutoModel.from_pretrained(resolve_model(args.model), use_safetensors=True)  # finish lazy imports
    t_imports = time.perf_counter() - started
    print(machine(f"torch {torch.__version__}", f"{torch.get_num_threads()} threads"))
    print(f"imports (not in either clock): {t_imports:.2f} s")

    catalogue = read_catalogue(SMALL, tags_per_movie=5)
    n = len(catalogue.movie_ids)
    print(f"{n:,} movies, {len(catalogue.desc_indices):,} descriptor strings, {len(catalogue.vocabulary):,} unique")

    start = time.perf_counter()
    encoder = load_encoder(args.model, args.pooling, torch.device("cpu"))
    t_load = time.perf_counter() - start
    vectors = encoder.encode_uncached(catalogue.vocabulary)  # (V, dim)
    ours = mean_by_rows(catalogue.desc_indptr, catalogue.desc_indices, vectors)  # (n, dim)
    t_ours = time.perf_counter() - start
    print(f"movierec: {t_ours:.2f} s ({t_load:.2f} s model load, {encoder.forward_passes} forward passes)", flush=True)

    start = time.perf_counter()
    path = resolve_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path, use_safetensors=True).eval()
    theirs = np.zeros_like(ours)
    with torch.no_grad():
        for i in range(n):
            strings = catalogue.descriptors(i)
            per_string = [model(**tokenizer(s, return_tensors="pt")).last_hidden_state[0][0].numpy() for s in strings]
            theirs[i] = np.mean(per_string, axis=0)
    t_theirs = time.perf_counter() - start
    cos = (ours * theirs).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1))
    print(f"notebook: {t_theirs:.1f} s ({len(catalogue.desc_indices):,} forward passes)")
    print(f"ratio: {t_theirs / t_ours:.0f}x (model load in both clocks); "
          f"with imports in both: {(t_theirs + t_imports) / (t_ours + t_imports):.0f}x")  # fmt: skip
    print(f"same movie vectors: min cosine {cos.min():.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
