"""The encoder: pooling against a direct transformers computation, padding invariance (the Redis cache is in
tests/redis/test_encoder.py; ``tiny_bert`` in tests/conftest.py)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, BertModel

from shared.errors import InvalidRequest
from shared.ml.encoder import _weights_sha256, load_encoder, mean_by_rows, resolve_model

CPU = torch.device("cpu")
STRINGS = ["Drama", "Children", "pixar", "atmospheric", "thought-provoking", "based on a book", "Sci-Fi", "a"]


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


def test_mean_by_rows() -> None:
    vectors = np.arange(12, dtype=np.float32).reshape(4, 3)
    got = mean_by_rows(np.array([0, 2, 3, 6]), np.array([0, 1, 3, 0, 2, 2]), vectors)
    expected = [vectors[[0, 1]].mean(0), vectors[3], vectors[[0, 2, 2]].mean(0)]
    np.testing.assert_allclose(got, np.stack(expected))


def test_unknown_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="could not be loaded"):
        load_encoder(str(tmp_path / "no-model-here"), "cls", CPU)


@pytest.fixture
def roots(tiny_bert: str, tmp_path: Path) -> tuple[Path, Path]:
    """Two hosts' data roots holding the same model at ``models/tiny`` (mounted at different places)."""
    for host in ("host-a", "host-b"):
        shutil.copytree(tiny_bert, tmp_path / host / "models" / "tiny")
    return tmp_path / "host-a", tmp_path / "host-b"


def test_model_names_resolve_against_this_hosts_data_root(roots: tuple[Path, Path], tiny_bert: str) -> None:
    root = roots[0]
    assert resolve_model("models/tiny", data_root=root) == str(root / "models" / "tiny")  # no "./" needed
    assert resolve_model("./models/tiny", data_root=root) == str(root / "models" / "tiny")
    assert resolve_model("models/x/../tiny", data_root=root) == str(root / "models" / "tiny")
    assert resolve_model(tiny_bert, data_root=root) == tiny_bert  # an absolute path as it is
    bundled = resolve_model("all-MiniLM-L6-v2", data_root=root)
    assert Path(bundled).is_dir() and resolve_model("sentence-transformers/all-MiniLM-L6-v2") == bundled
    shutil.copytree(tiny_bert, root / "all-MiniLM-L6-v2")
    assert resolve_model("all-MiniLM-L6-v2", data_root=root) == str(root / "all-MiniLM-L6-v2")  # a directory first
    assert resolve_model("org/some-model", data_root=root) == "org/some-model"  # a Hugging Face id
    for outside in ("..", "../host-b/models/tiny", "models/../../host-b"):
        with pytest.raises(InvalidRequest, match="outside the data root"):
            resolve_model(outside, data_root=root)
    for missing in ("./models/missing", "models/tiny/nope/deeper", "/nowhere/models/tiny"):
        with pytest.raises(InvalidRequest, match="not a directory under the data root") as raised:
            resolve_model(missing, data_root=root)
        assert repr(missing) in str(raised.value) and str(root) not in str(raised.value)


def test_hosts_with_different_mounts_agree_on_the_models_identity(roots: tuple[Path, Path]) -> None:
    a, b = (load_encoder("models/tiny", "cls", CPU, data_root=root) for root in roots)
    assert a.name == b.name == "models/tiny"  # what records keep: the name as given
    assert a.identity == b.identity == _weights_sha256(str(roots[0] / "models" / "tiny"))


def test_an_unknown_hub_id_fails_at_once_without_downloads(
    roots: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MOVIEREC_HUB_DOWNLOAD", raising=False)
    for name in ("models/missing", "nobody-here/no-such-model-14"):
        with pytest.raises(InvalidRequest) as raised:  # before: ~46 s of DNS retries (issue #14), then OSError
            load_encoder(name, "cls", CPU, data_root=roots[0])
        message = str(raised.value)
        assert message == (
            f"model {name!r} could not be loaded here: it is not a directory under the data root nor in the local "
            "Hugging Face cache (downloads are off: MOVIEREC_HUB_DOWNLOAD=1 allows them)"
        )
