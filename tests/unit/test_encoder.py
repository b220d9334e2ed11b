"""The encoder: pooling against a direct transformers computation, padding invariance, the Redis cache."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
import torch
from transformers import AutoTokenizer, BertConfig, BertModel

from shared.errors import InvalidRequest
from shared.ml.encoder import VectorCache, load_encoder, mean_by_rows, resolve_model

CPU = torch.device("cpu")
STRINGS = ["Drama", "Children", "pixar", "atmospheric", "thought-provoking", "based on a book", "Sci-Fi", "a"]


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny random BERT built from a config, with the bundled model's tokenizer."""
    out = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("all-MiniLM-L6-v2"))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return str(out)


def direct(path: str, text: str, pooling: str) -> np.ndarray:
    """The obvious computation: one string, no padding, straight through transformers."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = BertModel.from_pretrained(path)
    model.eval()
    batch = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state[0]  # (T, H)
    vector = hidden[0] if pooling == "cls" else hidden.mean(dim=0)
    out: np.ndarray = vector.numpy()
    return out


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_pooling_matches_transformers(tiny_bert: str, pooling: Any) -> None:
    encoder = load_encoder(tiny_bert, pooling, CPU)
    assert encoder.dim == 32
    got = encoder.encode_uncached(STRINGS)
    for text, vector in zip(STRINGS, got, strict=True):
        np.testing.assert_allclose(vector, direct(tiny_bert, text, pooling), rtol=1e-4, atol=1e-5)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.asarray((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)))


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_batched_equals_single_on_the_real_model(pooling: Any) -> None:
    encoder = load_encoder("all-MiniLM-L6-v2", pooling, CPU)
    assert encoder.dim == 384
    texts = [*STRINGS, "a considerably longer descriptor that forces plenty of padding on the short ones"]
    batched = encoder.encode_uncached(texts)
    single = np.stack([encoder.encode_uncached([t])[0] for t in texts])
    assert cosines(batched, single).min() >= 0.99999


def test_real_model_is_the_published_one() -> None:
    encoder = load_encoder("all-MiniLM-L6-v2", "cls", CPU)
    assert encoder.identity == "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"


def test_cache_is_hit_by_a_second_call(tiny_bert: str, redis_client: redis.Redis, fresh_prefix: str) -> None:
    encoder = load_encoder(tiny_bert, "mean", CPU)
    cache = VectorCache(redis_client, prefix=fresh_prefix)
    texts = STRINGS + STRINGS[:3]  # repeats are encoded once
    first, stats = cache.encode(encoder, texts)
    assert (stats.unique, stats.encoded, stats.cache_hits) == (len(STRINGS), len(STRINGS), 0)
    assert stats.forward_passes >= 1
    again, stats = cache.encode(encoder, list(reversed(texts)))
    assert (stats.encoded, stats.cache_hits, stats.forward_passes) == (0, len(STRINGS), 0)
    np.testing.assert_array_equal(again, first[::-1])
    other = load_encoder(tiny_bert, "cls", CPU)
    _, stats = cache.encode(other, texts)
    assert stats.encoded == len(STRINGS)  # another pooling is another cache


def test_mean_by_rows() -> None:
    vectors = np.arange(12, dtype=np.float32).reshape(4, 3)
    got = mean_by_rows(np.array([0, 2, 3, 6]), np.array([0, 1, 3, 0, 2, 2]), vectors)
    expected = [vectors[[0, 1]].mean(0), vectors[3], vectors[[0, 2, 2]].mean(0)]
    np.testing.assert_allclose(got, np.stack(expected))


def test_unknown_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="could not be loaded"):
        load_encoder(str(tmp_path / "no-model-here"), "cls", CPU)
