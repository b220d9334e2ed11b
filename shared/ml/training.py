"""Training's one entry point: ``train`` picks the architecture that ``config.architecture`` names.

    train(vectors, triplets, config, device, ratings, times)
        ├─ "linear": shared/ml/siamese.py ``train_siamese`` (the notebook's network; imports torch)
        ├─ "hybrid", "ials": shared/ml/hybrid.py ``train_hybrid`` (liked-space targets from ``ratings``, content
        │     tower; numpy, on the CPU)
        └─ "sequence": shared/ml/sequence.py ``train_sequence`` (self-attention over each user's ``ratings`` in
              ``times`` order, movie vectors tied to a content tower; torch, on ``device``)

Both build on shared/ml/fitting.py (TrainConfig, TrainResult, the split, the metric, Adam, the epoch loop),
which is where the API reads the hyper-parameters' limits from: it must never import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shared.errors import InvalidRequest
from shared.ml.hybrid import train_hybrid

if TYPE_CHECKING:
    import numpy as np
    import scipy.sparse as sp
    import torch

    from shared.ml.fitting import Progress, TrainConfig, TrainResult


def train(
    vectors: np.ndarray,
    triplets: np.ndarray,
    config: TrainConfig,
    *,
    device: torch.device,
    progress: Progress | None = None,
    autograd: bool = False,
    ratings: sp.csr_matrix | None = None,
    times: np.ndarray | None = None,
) -> TrainResult:
    """Train on ``triplets`` (m, 3) catalogue rows over ``vectors`` (n, d); answers weights, projections and
    metrics. "hybrid" and "ials" also need ``ratings`` (u, n) and run in numpy on the CPU whatever ``device``;
    "sequence" needs ``ratings`` and their ``times`` (aligned with ``ratings.data``: the CSR in its stored
    order) and runs on ``device`` (its triplets only measure it); "linear" runs on ``device``, by hand in numpy
    on the CPU unless ``autograd`` (see ``train_siamese``)."""
    if len(triplets) < 2:
        raise InvalidRequest("training needs at least 2 triplets")
    if config.architecture == "sequence":
        if ratings is None:
            raise InvalidRequest("the sequence architecture learns from ratings in time order; none were given")
        from shared.ml.sequence import train_sequence

        return train_sequence(vectors, triplets, ratings.indptr, ratings.indices, times, config, device=device,
                              progress=progress)  # fmt: skip
    if config.architecture in ("hybrid", "ials"):
        if ratings is None:
            raise InvalidRequest(f"the {config.architecture} architecture learns from ratings; none were given")
        return train_hybrid(vectors, triplets, ratings, config, progress=progress)
    from shared.ml.siamese import train_siamese  # torch at import: only where a network is trained

    return train_siamese(vectors, triplets, config, device=device, progress=progress, autograd=autograd)
