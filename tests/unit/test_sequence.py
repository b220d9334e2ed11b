"""The sequence model (shared/ml/sequence.py): its windows, its two forwards, its training, its serving side.

A planted pattern: movies 0-35 in a ring, each user's next movie mostly the successor of their last (j -> j + 1
mod 36); movies 36-39 nobody rates. Ratings are stored in catalogue-row order (as a CSR keeps them), so the
model sees the pattern only if it reads them in time order.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from shared.errors import InvalidRequest
from shared.ml import sequence
from shared.ml.fitting import TrainConfig, TrainResult
from shared.ml.sequence import MAX_LEN, SequenceNet, hidden_states, time_order, train_sequence, windows
from tests.helpers import REPO

CPU = torch.device("cpu")
MOVIES, RING, DIM = 40, 36, 16  # movies RING.. MOVIES - 1 are never rated
CONFIG = TrainConfig(architecture="sequence", hidden_dim=16, layers=2, dropout=0.1, lr=0.01, batch_size=16,
                     epochs=30, seed=3)  # fmt: skip


def ring_users(users: int, *, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[np.ndarray]]:
    """(indptr, movies, times, sequences): each user's movies stored by row (their times strictly increasing in
    the order they were watched), and each user's sequence in watching order."""
    rng = np.random.default_rng(seed)
    indptr, movies, times, sequences = [0], [], [], []
    for _ in range(users):
        length = int(rng.integers(5, 80))  # some users span several windows
        seq, j = [], int(rng.integers(RING))
        for _ in range(length):
            seq.append(j)
            j = (j + 1) % RING if rng.random() < 0.9 else int(rng.integers(RING))
        stamps = 1_000_000 + np.cumsum(rng.integers(1, 4, size=length))
        seq_a = np.array(seq)
        by_row = np.argsort(seq_a, kind="stable")
        movies += list(seq_a[by_row])
        times += list(stamps[by_row])
        indptr.append(len(movies))
        sequences.append(seq_a)
    return np.array(indptr), np.array(movies, np.int64), np.array(times, np.int64), sequences


def movie_vectors() -> np.ndarray:
    return np.random.default_rng(1).normal(size=(MOVIES, DIM)).astype(np.float32)


def some_triplets() -> np.ndarray:
    return np.random.default_rng(2).integers(0, MOVIES, size=(60, 3))


def successor_hit_rate(result: TrainResult, *, seed: int = 9) -> float:
    """Share of fresh users (not trained on) whose next movie is the top score over all movies, at a random cut."""
    net = SequenceNet.from_state({k: v.numpy() for k, v in result.state.items()})
    assert net is not None
    rng = np.random.default_rng(seed)
    _, _, _, sequences = ring_users(100, seed=seed)
    hits = 0
    for seq in sequences:
        cut = int(rng.integers(1, len(seq)))
        hits += int(np.argmax(result.projected @ net.query(result.projected, seq[:cut])) == seq[cut])
    return hits / len(sequences)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """These networks are tiny: a second intra-op thread only waits for the first, and on a busy machine (the
    suite runs in two processes on two cores) waits ten times as long as the work takes."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def trained() -> tuple[TrainResult, list[int]]:
    indptr, movies, times, _ = ring_users(30, seed=0)
    epochs: list[int] = []
    result = train_sequence(movie_vectors(), some_triplets(), indptr, movies, times, CONFIG, device=CPU,
                            progress=lambda e, *_: epochs.append(e))  # fmt: skip
    return result, epochs


def test_time_order_reads_time_then_row() -> None:
    rows = np.array([5, 3, 9, 1, 7])
    times = np.array([10, 10, 5, 10, 20], dtype=np.int64)
    assert rows[time_order(rows, times)].tolist() == [9, 1, 3, 5, 7]  # ties at 10 by row
    assert rows[time_order(rows, None)].tolist() == [1, 3, 5, 7, 9]
    assert time_order(rows[:0], times[:0]).tolist() == []


def test_windows_are_cut_from_the_end_right_aligned_every_rating_a_target_once() -> None:
    counts = [120, 1, 2, MAX_LEN + 1, MAX_LEN + 2, 0]
    indptr = np.r_[0, np.cumsum(counts)]
    movies = np.concatenate([np.arange(c) for c in counts])  # each user's rows 0..c-1, in time order
    times = np.concatenate([np.arange(c) * 10 for c in counts]).astype(np.int64)
    pad = 999
    w = windows(indptr, movies, times, pad=pad)
    assert w.shape == (3 + 0 + 1 + 1 + 2, MAX_LEN + 1)
    # The 120 ratings: [69, 120), [19, 70), [0, 20) left-padded; neighbours share one movie.
    np.testing.assert_array_equal(w[0], np.arange(69, 120))
    np.testing.assert_array_equal(w[1], np.arange(19, 70))
    np.testing.assert_array_equal(w[2], np.r_[np.full(31, pad), np.arange(20)])
    np.testing.assert_array_equal(w[3], np.r_[np.full(MAX_LEN - 1, pad), 0, 1])  # 2 ratings: one window
    np.testing.assert_array_equal(w[4], np.arange(MAX_LEN + 1))  # exactly one full window
    np.testing.assert_array_equal(w[5], np.arange(1, MAX_LEN + 2))
    np.testing.assert_array_equal(w[6], np.r_[np.full(MAX_LEN - 1, pad), 0, 1])
    # Every rating after a user's first is a target exactly once (a real input before it).
    assert int((w[:, :-1] != pad).sum()) == sum(max(c - 1, 0) for c in counts)
    # Stored out of order, the windows read time order; times None: row order.
    shuffled = np.r_[[2, 0, 1]]
    np.testing.assert_array_equal(windows([0, 3], shuffled, np.array([30, 10, 20]), pad=pad)[0, -3:], [0, 1, 2])
    np.testing.assert_array_equal(windows([0, 3], shuffled, None, pad=pad)[0, -3:], [0, 1, 2])
    np.testing.assert_array_equal(windows([0, 3], shuffled, np.array([10, 30, 20]), pad=pad)[0, -3:], [2, 1, 0])


def test_numpy_forward_equals_the_torch_forward_on_padded_windows(trained: tuple[TrainResult, list[int]]) -> None:
    result, _ = trained
    net = SequenceNet.from_state({k: v.numpy() for k, v in result.state.items()})
    assert net is not None and net.layers == CONFIG.layers and net.max_len == MAX_LEN
    rng = np.random.default_rng(4)
    lengths = [1, 2, 7, MAX_LEN - 1, MAX_LEN, MAX_LEN + 1, 80]
    histories = [rng.integers(0, MOVIES, size=k) for k in lengths]
    batch = np.full((len(lengths), MAX_LEN), MOVIES)  # one padded batch: key padding differs row to row
    for i, history in enumerate(histories):
        last = history[-MAX_LEN:]
        batch[i, MAX_LEN - len(last) :] = last
    hidden = hidden_states(result.state, torch.from_numpy(result.projected), torch.from_numpy(batch))
    assert torch.isfinite(hidden).all()  # padded rows too
    for i, history in enumerate(histories):
        mine = net.query(result.projected, history)
        assert mine.dtype == np.float32 and mine.shape == (CONFIG.hidden_dim,)
        np.testing.assert_allclose(mine, hidden[i, -1].numpy(), atol=1e-5, rtol=0)
    longest = histories[-1]
    np.testing.assert_array_equal(net.query(result.projected, longest), net.query(result.projected, longest[-MAX_LEN:]))
    assert not net.query(result.projected, np.zeros(0, np.int64)).any()


def test_queries_are_each_users_alone_bit_for_bit(trained: tuple[TrainResult, list[int]]) -> None:
    result, _ = trained
    net = SequenceNet.from_state({k: v.numpy() for k, v in result.state.items()})
    assert net is not None
    rng = np.random.default_rng(5)
    counts = [3, 0, 60, 1, 12]
    indptr = np.r_[0, np.cumsum(counts)]
    rows = rng.integers(0, MOVIES, size=indptr[-1])
    times = rng.integers(0, 5, size=indptr[-1]).astype(np.int64)  # many ties: broken by row
    together = net.queries(result.projected, indptr, rows, times)
    assert together.shape == (len(counts), CONFIG.hidden_dim) and together.dtype == np.float32
    for i in range(len(counts)):
        a, b = indptr[i], indptr[i + 1]
        alone = net.queries(result.projected, np.array([0, b - a]), rows[a:b], times[a:b])
        np.testing.assert_array_equal(together[i], alone[0])
        ordered = rows[a:b][time_order(rows[a:b], times[a:b])]
        np.testing.assert_array_equal(together[i], net.query(result.projected, ordered))
    assert not together[1].any()  # no rating: zeros
    by_row = net.queries(result.projected, indptr, rows, None)
    np.testing.assert_array_equal(by_row[0], net.query(result.projected, np.sort(rows[:3])))


def test_training_learns_the_planted_successor(trained: tuple[TrainResult, list[int]]) -> None:
    result, epochs = trained
    assert epochs == list(range(1, CONFIG.epochs + 1))
    assert len(result.train_losses) == len(result.val_losses) == CONFIG.epochs
    assert result.train_losses[-1] < 0.5 * result.train_losses[0]
    assert result.val_losses[-1] < 0.5 * result.val_losses[0]
    assert successor_hit_rate(result) > 0.6  # chance: 1 in 36


def test_state_holds_the_tower_and_the_network_and_cold_movies_sit_at_their_content(
    trained: tuple[TrainResult, list[int]],
) -> None:
    result, _ = trained
    h = CONFIG.hidden_dim
    assert result.state["proj.weight"].shape == (h, DIM) and result.state["proj.bias"].shape == (h,)
    assert result.state["seq.pos"].shape == (MAX_LEN, h)
    assert {k for k in result.state if not k.startswith("seq.")} == {"proj.weight", "proj.bias"}
    for tensor in result.state.values():
        assert tensor.dtype == torch.float32 and tensor.device == CPU
        assert MOVIES not in tensor.shape  # no movie embeddings in the state
    assert result.projected.shape == (MOVIES, h) and result.projected.dtype == np.float32
    assert result.warm == RING
    vectors = movie_vectors()
    content = vectors @ result.state["proj.weight"].numpy().T + result.state["proj.bias"].numpy()
    np.testing.assert_allclose(result.projected[RING:], content[RING:], atol=1e-6)  # cold: c(x) alone
    assert np.abs(result.projected[:RING] - content[:RING]).max() > 1e-2  # warm: c(x) + a learnt residual
    assert 0.0 <= result.auc_before <= 1.0 and 0.0 <= result.auc_after <= 1.0
    assert SequenceNet.from_state({"proj.weight": np.zeros((h, DIM), np.float32)}) is None


def test_training_is_deterministic_for_a_seed() -> None:
    indptr, movies, times, _ = ring_users(12, seed=1)
    config = TrainConfig(architecture="sequence", hidden_dim=8, layers=1, dropout=0.2, lr=0.01, batch_size=4,
                         epochs=2, seed=7)  # fmt: skip
    vectors, triplets = movie_vectors(), some_triplets()

    def run(config: TrainConfig) -> TrainResult:
        return train_sequence(vectors, triplets, indptr, movies, times, config, device=CPU)

    one, two = run(config), run(config)
    assert one.state.keys() == two.state.keys()
    for name, tensor in one.state.items():
        assert torch.equal(tensor, two.state[name]), name
    np.testing.assert_array_equal(one.projected, two.projected)
    assert one.train_losses == two.train_losses and one.val_losses == two.val_losses
    other = run(TrainConfig(**{**config.as_dict(), "seed": 8}))
    assert not np.array_equal(one.projected, other.projected)


def test_sampled_softmax_trains_and_learns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sequence, "FULL_SOFTMAX_LIMIT", 10)
    monkeypatch.setattr(sequence, "SAMPLED_NEGATIVES", 12)
    indptr, movies, times, _ = ring_users(30, seed=0)
    result = train_sequence(movie_vectors(), some_triplets(), indptr, movies, times, CONFIG, device=CPU)
    assert np.isfinite(result.train_losses).all() and np.isfinite(result.val_losses).all()
    assert result.val_losses[-1] < 0.5 * result.val_losses[0]  # the full softmax's, on held-out windows
    assert successor_hit_rate(result) > 0.5


@pytest.mark.parametrize("counts", [[1, 1, 1], [0, 2, 1]])
def test_fewer_than_two_windows_are_refused(counts: list[int]) -> None:
    indptr = np.r_[0, np.cumsum(counts)]
    movies = np.arange(indptr[-1]) % MOVIES
    with pytest.raises(InvalidRequest, match="at least 2 training windows"):
        train_sequence(movie_vectors(), some_triplets(), indptr, movies, None, CONFIG, device=CPU)


def test_the_module_imports_without_torch() -> None:
    probe = "import sys, shared.ml.sequence; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_on_a_cpu_with_bfloat16_the_products_are_bfloat16_and_near_float32(monkeypatch: pytest.MonkeyPatch) -> None:
    generator = torch.Generator().manual_seed(1)
    hv = torch.randn(40, 16, generator=generator) * 2
    z = torch.randn(300, 16, generator=generator)
    targets = torch.randint(300, (40,), generator=generator)
    monkeypatch.setattr(sequence, "_cpu_bf16", lambda: True)
    assert sequence._product_dtype(hv) == torch.bfloat16 and sequence._product_dtype(hv.double()) == torch.float64
    low = sequence._full_softmax()(hv, z, targets)
    monkeypatch.setenv("MOVIEREC_SEQUENCE_FP32", "1")
    assert sequence._product_dtype(hv) == torch.float32
    exact = sequence._full_softmax()(hv, z, targets)
    torch.testing.assert_close(exact, torch.nn.functional.cross_entropy(hv @ z.T, targets))
    assert low.dtype == torch.float32 and abs(float(low) - float(exact)) < 0.02 * float(exact)
    assert float(low) != float(exact)  # bfloat16 products did run


@pytest.mark.parametrize("chunk", [sequence.SOFTMAX_CHUNK, 7 * 50])  # one chunk; 7 rows at a time, a short last
def test_the_full_softmax_is_torchs_cross_entropy(chunk: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sequence, "SOFTMAX_CHUNK", chunk)
    generator = torch.Generator().manual_seed(0)
    hv = torch.randn(30, 8, generator=generator, dtype=torch.float64) * 3
    z = torch.randn(50, 8, generator=generator, dtype=torch.float64)
    targets = torch.randint(50, (30,), generator=generator)
    mine_hv, mine_z = hv.clone().requires_grad_(), z.clone().requires_grad_()
    ref_hv, ref_z = hv.clone().requires_grad_(), z.clone().requires_grad_()
    mine = sequence._full_softmax()(mine_hv, mine_z, targets)
    (mine * 2.5).backward()  # an upstream gradient other than 1
    ref = torch.nn.functional.cross_entropy(ref_hv @ ref_z.T, targets)
    (ref * 2.5).backward()
    torch.testing.assert_close(mine, ref.float())
    torch.testing.assert_close(mine_hv.grad, ref_hv.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mine_z.grad, ref_z.grad, rtol=1e-5, atol=1e-6)


def test_a_cpu_training_that_would_take_too_long_stops_after_its_first_steps_saying_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    indptr, movies, times, _ = ring_users(12, seed=1)
    endless = TrainConfig(architecture="sequence", hidden_dim=8, layers=1, batch_size=4, epochs=200, seed=7)
    monkeypatch.setenv("MOVIEREC_SEQUENCE_CPU_HOURS", "1e-6")  # 3.6 ms: a limit 200 epochs pass
    with pytest.raises(InvalidRequest, match=r"would train for about [\d.]+ hours on this worker's CPU") as caught:
        train_sequence(movie_vectors(), some_triplets(), indptr, movies, times, endless, device=CPU)
    assert "over the limit of 1e-06 (MOVIEREC_SEQUENCE_CPU_HOURS)" in str(caught.value)
    assert "a gpu worker with CUDA" in str(caught.value)
    monkeypatch.delenv("MOVIEREC_SEQUENCE_CPU_HOURS")  # the default: an hour
    short = TrainConfig(**{**endless.as_dict(), "epochs": 3})
    assert (
        len(train_sequence(movie_vectors(), some_triplets(), indptr, movies, times, short, device=CPU).val_losses) == 3
    )
