"""The bounds of unpacking an uploaded zip (shared/logic/uploads.py ``UnpackBudget``): a compression ratio and an
absolute size, counted on the bytes written whatever the zip's headers declare; past either, nothing kept."""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

import pytest

from shared.errors import DataError
from shared.logic.uploads import MAX_UNPACK_RATIO, RATIO_SLACK_BYTES, extract_movielens

MOVIES = b"movieId,title,genres\n1,Toy Story (1995),Animation|Children\n"
HEADER = b"userId,movieId,rating,timestamp\n"
ROW = b"1,1,4.0,964982703\n"


def bomb(path: Path, unpacked_bytes: int) -> Path:
    """A MovieLens zip whose ratings.csv is ``unpacked_bytes`` of one row repeated (deflates ~500 times),
    written in blocks so that building it never holds it whole."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("ml/movies.csv", MOVIES)
        with zf.open("ml/ratings.csv", "w", force_zip64=True) as out:
            out.write(HEADER)
            block = ROW * ((1 << 20) // len(ROW))
            for _ in range(unpacked_bytes // len(block)):
                out.write(block)
    return path


def test_a_bomb_stops_at_the_ratio_long_before_the_absolute_cap(tmp_path: Path) -> None:
    archive = bomb(tmp_path / "bomb.zip", 200 << 20)  # 200 MB of rows in ~0.4 MB
    into = tmp_path / "out"
    with pytest.raises(DataError, match=f"more than {MAX_UNPACK_RATIO} times its compressed size") as refused:
        extract_movielens(archive, into, max_bytes=1 << 40)
    assert "ratings.csv" in refused.value.message
    assert list(into.iterdir()) == []  # nothing kept: what was written is deleted


def test_the_absolute_cap_holds_when_the_ratio_would_allow_more(tmp_path: Path) -> None:
    archive = bomb(tmp_path / "bomb.zip", 8 << 20)
    into = tmp_path / "out"
    with pytest.raises(DataError, match="unpacks to more than 2000000 bytes"):
        extract_movielens(archive, into, max_bytes=2_000_000, max_ratio=1e9)
    assert list(into.iterdir()) == []


def test_a_declared_compressed_size_that_lies_does_not_widen_the_ratio(tmp_path: Path) -> None:
    """The central directory says ratings.csv is 1 GB compressed: refused all the same, nothing kept (zipfile
    feeds the decompressor only what the file holds; the bound takes the archive's real size)."""
    archive = bomb(tmp_path / "bomb.zip", 64 << 20)
    data = bytearray(archive.read_bytes())
    entry = data.rfind(b"PK\x01\x02")  # the last central directory entry: ratings.csv
    assert data[entry + 46 : entry + 46 + len(b"ml/ratings.csv")] == b"ml/ratings.csv"
    if struct.unpack_from("<I", data, entry + 20)[0] != 0xFFFFFFFF:
        struct.pack_into("<I", data, entry + 20, 1 << 30)
    else:  # zip64: the sizes are in the extra field, after its id and length: uncompressed, then compressed
        extra = entry + 46 + struct.unpack_from("<H", data, entry + 28)[0]
        struct.pack_into("<Q", data, extra + 4 + 8, 1 << 30)
    archive.write_bytes(bytes(data))
    assert zipfile.ZipFile(archive).getinfo("ml/ratings.csv").compress_size == 1 << 30
    into = tmp_path / "out"
    with pytest.raises(DataError, match="archive"):
        extract_movielens(archive, into, max_bytes=1 << 40)
    assert list(into.iterdir()) == []


def test_tiny_members_unpack_whatever_their_ratio(tmp_path: Path) -> None:
    rows = HEADER + ROW * (RATIO_SLACK_BYTES // len(ROW) // 2)  # 0.5 MB that deflates ~500 times
    archive = tmp_path / "small.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("movies.csv", MOVIES)
        zf.writestr("ratings.csv", rows)
    out = extract_movielens(archive, tmp_path / "out", max_bytes=1 << 30)
    assert (out / "ratings.csv").read_bytes() == rows


def test_the_real_movielens_zip_unpacks_under_the_defaults(tmp_path: Path, data_root: Path) -> None:
    real = data_root / "ml-latest-small"  # the fixture fails, naming where, when the sample is missing
    archive = tmp_path / "ml-latest-small.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(real.iterdir()):
            zf.write(path, f"ml-latest-small/{path.name}")
    out = extract_movielens(archive, tmp_path / "out", max_bytes=2 << 30)
    assert (out / "ratings.csv").read_bytes() == (real / "ratings.csv").read_bytes()
