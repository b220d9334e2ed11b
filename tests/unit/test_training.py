"""The Siamese network (shared/ml/siamese.py), its loss and its metric; the trained model on ml-latest-small."""

from __future__ import annotations

import subprocess
import sys
from itertools import product

import numpy as np
import pytest
import torch

from shared.errors import InvalidRequest
from shared.ml.encoder import load_encoder, mean_by_rows
from shared.ml.fitting import TrainConfig, roc_auc
from shared.ml.mining import build_incidence, mine_range
from shared.ml.movielens import read_catalogue
from shared.ml.siamese import build_net, triplet_loss
from shared.ml.training import train
from tests.helpers import REPO, SMALL

CPU = torch.device("cpu")


def test_triplet_loss_is_the_euclidean_hinge() -> None:
    a = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    p = torch.tensor([[0.3, 0.4], [0.0, 0.0]])  # |a - p| = 0.5, 0
    n = torch.tensor([[0.6, 0.8], [0.0, 0.1]])  # |a - n| = 1.0, 0.1
    # relu(0.5 - 1.0 + 0.3) = 0 and relu(0 - 0.1 + 0.3) = 0.2: mean 0.1
    assert float(triplet_loss(a, p, n, 0.3)) == pytest.approx(0.1)


def test_roc_auc_against_counting_pairs() -> None:
    rng = np.random.default_rng(0)
    pos, neg = rng.integers(0, 5, 40).astype(float), rng.integers(0, 5, 30).astype(float)  # many ties
    pairs = [(1.0 if p > q else 0.5 if p == q else 0.0) for p, q in product(pos, neg)]
    assert roc_auc(pos, neg) == pytest.approx(np.mean(pairs))
    assert roc_auc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 1.0


def test_the_training_core_and_the_dispatcher_import_without_torch() -> None:
    # The API reads LIMITS from shared.ml.fitting; torch comes in only with shared.ml.siamese, when a network trains.
    probe = "import sys, shared.ml.fitting, shared.ml.hybrid, shared.ml.training; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_network_output_is_unit_length() -> None:
    net = build_net(8, 5)
    out = net(torch.randn(4, 8))
    assert out.shape == (4, 5)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(4))


@pytest.mark.parametrize(
    "knobs", [{"epochs": 0}, {"hidden_dim": 1}, {"margin": 0.0}, {"lr": 2.0}, {"batch_size": 0}, {"epochs": 1000}]
)
def test_hyper_parameters_out_of_range_are_refused(knobs: dict[str, float]) -> None:
    with pytest.raises(InvalidRequest):
        TrainConfig(**knobs)


@pytest.fixture(scope="module")
def small_inputs() -> tuple[np.ndarray, np.ndarray]:
    catalogue = read_catalogue(SMALL, tags_per_movie=5)
    inc = build_incidence(catalogue.desc_indptr, catalogue.desc_indices, catalogue.vocabulary)
    triplets = mine_range(inc, 0, inc.n, seed=42, strategy="notebook").triplets
    encoder = load_encoder("all-MiniLM-L6-v2", "cls", CPU)
    vectors = mean_by_rows(catalogue.desc_indptr, catalogue.desc_indices, encoder.encode_uncached(catalogue.vocabulary))
    return vectors, triplets


def test_trained_model_on_ml_latest_small_reaches_auc_095(small_inputs: tuple[np.ndarray, np.ndarray]) -> None:
    vectors, triplets = small_inputs
    epochs_seen = []
    result = train(vectors, triplets, TrainConfig(epochs=3), device=CPU, progress=lambda e, *_: epochs_seen.append(e))
    assert epochs_seen == [1, 2, 3]
    assert result.auc_after >= 0.95
    assert result.projected.shape == (len(vectors), 50)
    np.testing.assert_allclose(np.linalg.norm(result.projected, axis=1), 1.0, rtol=1e-5)
    assert result.train_losses[-1] < result.train_losses[0]


def test_training_is_reproducible_on_the_cpu(small_inputs: tuple[np.ndarray, np.ndarray]) -> None:
    vectors, triplets = small_inputs
    sub = triplets[:600]
    one = train(vectors, sub, TrainConfig(epochs=2, seed=5), device=CPU)
    two = train(vectors, sub, TrainConfig(epochs=2, seed=5), device=CPU)
    for name, tensor in one.state.items():
        assert torch.equal(tensor, two.state[name])
    other = train(vectors, sub, TrainConfig(epochs=2, seed=6), device=CPU)
    assert not torch.equal(one.state["proj.weight"], other.state["proj.weight"])


def test_numpy_steps_match_the_autograd_loop(small_inputs: tuple[np.ndarray, np.ndarray]) -> None:
    vectors, triplets = small_inputs
    sub = triplets[:2000]
    config = TrainConfig(epochs=2, seed=3)
    by_hand = train(vectors, sub, config, device=CPU)
    autograd = train(vectors, sub, config, device=CPU, autograd=True)
    for name, tensor in by_hand.state.items():
        torch.testing.assert_close(tensor, autograd.state[name], atol=2e-4, rtol=1e-3)
    np.testing.assert_allclose(by_hand.train_losses, autograd.train_losses, rtol=1e-3, atol=1e-6)
    assert abs(by_hand.auc_after - autograd.auc_after) < 1e-3
