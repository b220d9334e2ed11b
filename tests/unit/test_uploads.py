"""Unpacking an uploaded MovieLens zip: what it extracts, and the archives it refuses."""

from __future__ import annotations

import stat
import zipfile
from pathlib import Path

import pytest

from shared.errors import DataError
from shared.logic.uploads import extract_movielens

MOVIES = b"movieId,title,genres\n1,Toy Story (1995),Animation|Children\n"
RATINGS = b"userId,movieId,rating,timestamp\n1,1,4.0,964982703\n"


def make_zip(path: Path, members: dict[str, bytes], *, links: tuple[str, ...] = ()) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        for name in links:
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
    return path


def test_the_grouplens_layout_extracts_the_movielens_files_flat(tmp_path: Path) -> None:
    archive = make_zip(
        tmp_path / "ml.zip",
        {
            "ml-latest-small/": b"",
            "ml-latest-small/movies.csv": MOVIES,
            "ml-latest-small/ratings.csv": RATINGS,
            "ml-latest-small/tags.csv": b"userId,movieId,tag,timestamp\n",
            "ml-latest-small/README.txt": b"not extracted",
            "other/ratings.csv": b"not the dataset's",
        },
    )
    out = extract_movielens(archive, tmp_path / "out", max_bytes=1 << 20)
    assert sorted(p.name for p in out.iterdir()) == ["movies.csv", "ratings.csv", "tags.csv"]
    assert (out / "movies.csv").read_bytes() == MOVIES and (out / "ratings.csv").read_bytes() == RATINGS


def test_files_at_the_top_of_the_zip_are_found_too(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "flat.zip", {"movies.csv": MOVIES, "ratings.csv": RATINGS})
    out = extract_movielens(archive, tmp_path / "out", max_bytes=1 << 20)
    assert (out / "ratings.csv").read_bytes() == RATINGS


@pytest.mark.parametrize(
    ("members", "links", "problem"),
    [
        ({"../movies.csv": MOVIES, "ratings.csv": RATINGS}, (), "climbs out"),
        ({"ml/movies.csv": MOVIES, "ml/ratings.csv": RATINGS, "ml/../../evil": b"x"}, (), "climbs out"),
        ({"/abs/movies.csv": MOVIES, "/abs/ratings.csv": RATINGS}, (), "climbs out"),
        ({"ml/movies.csv": MOVIES}, ("ml/ratings.csv",), "symbolic link"),
        ({"ml/ratings.csv": RATINGS}, (), "holds no movies.csv"),
        ({"a/movies.csv": MOVIES, "b/movies.csv": MOVIES, "a/ratings.csv": RATINGS}, (), "more than one"),
        ({"ml/movies.csv": MOVIES, "ratings.csv": RATINGS}, (), "no ratings.csv beside movies.csv"),
    ],
)
def test_unsafe_or_incomplete_archives_are_refused(
    tmp_path: Path, members: dict[str, bytes], links: tuple[str, ...], problem: str
) -> None:
    archive = make_zip(tmp_path / "bad.zip", members, links=links)
    with pytest.raises(DataError, match=problem) as caught:
        extract_movielens(archive, tmp_path / "out", max_bytes=1 << 20)
    assert caught.value.file == "archive"
    assert not (tmp_path / "evil").exists() and not (tmp_path.parent / "movies.csv").exists()


def test_a_zip_bomb_stops_at_the_cap_counted_as_written(tmp_path: Path) -> None:
    big = b"userId,movieId,rating,timestamp\n" + b"1,1,4.0,964982703\n" * 200_000  # ~3.8 MB, deflates to ~10 kB
    archive = make_zip(tmp_path / "bomb.zip", {"movies.csv": MOVIES, "ratings.csv": big})
    assert archive.stat().st_size < 100_000
    with pytest.raises(DataError, match="unpacks to more than 1000000 bytes"):
        extract_movielens(archive, tmp_path / "out", max_bytes=1_000_000)


@pytest.mark.parametrize("content", [b"movieId,title\n", b"PK\x03\x04 then garbage" * 10, b""])
def test_what_is_not_a_zip_is_refused(tmp_path: Path, content: bytes) -> None:
    archive = tmp_path / "not.zip"
    archive.write_bytes(content)
    with pytest.raises(DataError, match="zip"):
        extract_movielens(archive, tmp_path / "out", max_bytes=1 << 20)
