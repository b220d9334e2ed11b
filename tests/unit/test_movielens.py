"""Descriptor building and ratings against slow, obvious references on small frames."""

from __future__ import annotations

import shutil
import tracemalloc
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from shared.errors import DataError, PathNotAllowed
from shared.ml.movielens import NO_GENRES, index_of, read_catalogue, read_ratings
from tests.helpers import SMALL


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text.strip() + "\n")
    return path


def reference_descriptors(directory: Path, k: int, fix: dict[int, list[str]] | None = None) -> dict[int, list[str]]:
    """The notebook's meaning in plain Python: genres, then top-k genome tags, else top-k user tags."""
    movies = pd.read_csv(directory / "movies.csv")
    user_tags: dict[int, Counter[str]] = {}
    if (directory / "tags.csv").exists():
        for row in pd.read_csv(directory / "tags.csv", keep_default_na=False).itertuples():
            tag = str(row.tag).strip().lower()
            if tag:
                user_tags.setdefault(int(row.movieId), Counter())[tag] += 1
    genome: dict[int, list[tuple[float, str]]] = {}
    if (directory / "genome-scores.csv").exists():
        names = dict(pd.read_csv(directory / "genome-tags.csv").itertuples(index=False))
        for row in pd.read_csv(directory / "genome-scores.csv").itertuples():
            genome.setdefault(int(row.movieId), []).append((float(row.relevance), names[int(row.tagId)]))
    out = {}
    for row in movies.itertuples():
        genres = [g for g in str(row.genres).split("|") if g and g != NO_GENRES]
        if not genres and fix and row.movieId in fix:
            genres = fix[row.movieId]
        if row.movieId in genome:
            tags = [t for _, t in sorted(genome[row.movieId], key=lambda rt: (-rt[0], rt[1]))[:k]]
        else:
            counts = user_tags.get(row.movieId, Counter())
            tags = [t for t, _ in sorted(counts.items(), key=lambda tc: (-tc[1], tc[0]))[:k]]
        if genres + tags:
            out[int(row.movieId)] = genres + tags
    return out


def as_dict(directory: Path, k: int, fix_csv: Path | None = None) -> dict[int, list[str]]:
    c = read_catalogue(directory, tags_per_movie=k, genres_fix_csv=fix_csv)
    return {int(m): c.descriptors(i) for i, m in enumerate(c.movie_ids)}


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    write(
        tmp_path,
        "movies.csv",
        """
movieId,title,genres
10,"Alpha, The (1990)",Comedy|Drama
20,Beta (1991),(no genres listed)
30,Gamma (1992),(no genres listed)
40,Delta (1993),Horror
50,Epsilon (1994),Comedy
""",
    )
    write(
        tmp_path,
        "tags.csv",
        """
userId,movieId,tag,timestamp
1,10,Funny,1
2,10,funny ,2
3,10,dark,3
1,10,clever,4
1,20,Quiet,5
1,40,zzz,6
2,40,aaa,7
1,50,comedy,8
""",
    )
    write(tmp_path, "ratings.csv", "userId,movieId,rating,timestamp\n1,10,4.0,1\n1,40,3.5,2\n2,10,5.0,3\n")
    return tmp_path


def test_user_tags_follow_the_reference_with_ties_and_case(tiny: Path) -> None:
    got = as_dict(tiny, 2)
    assert got == reference_descriptors(tiny, 2)
    # "funny" counted twice across cases; the tie between "clever" and "dark" goes to the first alphabetically
    assert got[10] == ["Comedy", "Drama", "funny", "clever"]
    assert got[40] == ["Horror", "aaa", "zzz"]
    # a movie with no genres but a tag is kept; with neither it is dropped
    assert got[20] == ["quiet"]
    assert 30 not in got
    # a tag repeating a genre is kept, as in the notebook
    assert got[50] == ["Comedy", "comedy"]


def test_dropped_movies_are_counted_and_order_is_kept(tiny: Path) -> None:
    c = read_catalogue(tiny, tags_per_movie=5)
    assert list(c.movie_ids) == [10, 20, 40, 50]
    assert c.movies_total == 5 and c.dropped == 1
    assert c.titles[0] == "Alpha, The (1990)"
    assert c.tag_source == "tags"


def test_genres_fix_csv_fills_missing_genres_only(tiny: Path) -> None:
    fix = write(tiny, "fix.csv", "movieId,genres\n30,Documentary|War\n10,Western\n")
    got = as_dict(tiny, 1, fix)
    assert got == reference_descriptors(tiny, 1, {30: ["Documentary", "War"], 10: ["Western"]})
    assert got[30] == ["Documentary", "War"]
    assert got[10][:2] == ["Comedy", "Drama"]


def test_genome_tags_win_where_a_movie_is_in_the_genome(tiny: Path) -> None:
    write(tiny, "genome-tags.csv", "tagId,tag\n1,zombies\n2,atmospheric\n3,witty\n")
    write(
        tiny,
        "genome-scores.csv",
        "movieId,tagId,relevance\n10,1,0.2\n10,2,0.9\n10,3,0.9\n40,1,0.95\n40,2,0.1\n40,3,0.3\n",
    )
    got = as_dict(tiny, 2)
    assert got == reference_descriptors(tiny, 2)
    assert got[10] == ["Comedy", "Drama", "atmospheric", "witty"]  # tie on relevance: alphabetical
    assert got[40] == ["Horror", "zombies", "witty"]
    assert got[20] == ["quiet"]  # not in the genome: user tags
    assert read_catalogue(tiny, tags_per_movie=2).tag_source == "genome+tags"


def test_real_small_dataset_matches_the_reference_and_the_notebook_counts() -> None:
    c = read_catalogue(SMALL, tags_per_movie=5)
    assert {int(m): c.descriptors(i) for i, m in enumerate(c.movie_ids)} == reference_descriptors(SMALL, 5)
    assert (c.movies_total, len(c.movie_ids)) == (9742, 9709)
    assert len(c.desc_indices) == 24_884 and len(c.vocabulary) == 1_218


def test_ratings_csr_matches_pandas(tiny: Path) -> None:
    c = read_catalogue(SMALL, tags_per_movie=5)
    r = read_ratings(SMALL / "ratings.csv", c.movie_ids, chunk_rows=7_000)
    frame = pd.read_csv(SMALL / "ratings.csv")
    assert r.rows_read == len(frame) == 100_836
    assert len(r.user_ids) == frame.userId.nunique() == 610
    kept = frame[frame.movieId.isin(set(c.movie_ids.tolist()))]
    assert r.kept == len(kept)
    index = {int(m): i for i, m in enumerate(c.movie_ids)}
    for j in (0, 17, 609):
        user = int(r.user_ids[j])
        rows = kept[kept.userId == user]
        lo, hi = r.indptr[j], r.indptr[j + 1]
        assert list(r.movie_index[lo:hi]) == [index[m] for m in rows.movieId]
        np.testing.assert_array_equal(r.values[lo:hi], rows.rating.to_numpy(np.float32))
        np.testing.assert_array_equal(r.timestamps[lo:hi], rows.timestamp.to_numpy(np.int64))
    # every timestamp, aligned with the values: the file is sorted by user, so the kept rows are the CSR's order
    assert r.timestamps.dtype == np.int64 and len(r.timestamps) == r.kept
    np.testing.assert_array_equal(r.timestamps, kept.timestamp.to_numpy(np.int64))
    np.testing.assert_array_equal(r.values, kept.rating.to_numpy(np.float32))


def test_unsorted_ratings_are_grouped_by_user(tiny: Path) -> None:
    write(tiny, "ratings.csv", "userId,movieId,rating,timestamp\n3,10,1.0,1\n1,40,2.0,2\n3,40,3.0,3\n1,10,4.0,4\n")
    c = read_catalogue(tiny, tags_per_movie=5)
    r = read_ratings(tiny / "ratings.csv", c.movie_ids, chunk_rows=2)
    assert list(r.user_ids) == [1, 3]
    assert list(r.indptr) == [0, 2, 4]
    assert list(r.values) == [2.0, 4.0, 1.0, 3.0]
    assert list(r.timestamps) == [2, 4, 1, 3]  # moved with their ratings


def test_timestamps_stay_with_their_ratings_when_movies_are_dropped(tiny: Path) -> None:
    # movie 30 has no descriptor (dropped from the catalogue), 99 is not in movies.csv: both ratings are skipped
    write(
        tiny,
        "ratings.csv",
        """
userId,movieId,rating,timestamp
1,10,4.0,964982703
1,30,3.0,964981247
1,40,3.5,1147880044
2,99,2.0,1
2,50,5.0,1700000000000
7,20,1.0,0
""",
    )
    c = read_catalogue(tiny, tags_per_movie=5)
    r = read_ratings(tiny / "ratings.csv", c.movie_ids, chunk_rows=2)
    assert r.rows_read == 6 and r.kept == 4
    assert list(r.user_ids) == [1, 2, 7] and list(r.indptr) == [0, 2, 3, 4]
    assert [int(c.movie_ids[i]) for i in r.movie_index] == [10, 40, 50, 20]
    assert list(r.values) == [4.0, 3.5, 5.0, 1.0]
    assert r.timestamps.dtype == np.int64
    assert list(r.timestamps) == [964982703, 1147880044, 1_700_000_000_000, 0]  # ms-scale values fit in int64


def ingest_files(directory: Path) -> None:
    c = read_catalogue(directory, tags_per_movie=5)
    read_ratings(directory / "ratings.csv", c.movie_ids, chunk_rows=1)


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("movies.csv", "movieId,title\n1,A\n", "movies.csv, line 1: missing column(s) genres"),
        (
            "movies.csv",
            "movieId,title,genres\n1,A,Drama\nx,B,Comedy\n",
            "movies.csv, line 3: movieId 'x' is not a number",
        ),
        ("movies.csv", "movieId,title,genres\n1,A,Drama\n1,B,Comedy\n", "movies.csv, line 3: movieId 1 appears twice"),
        (
            "movies.csv",
            "movieId,title,genres\n1,A,Drama\n2,B,Comedy,extra\n",
            "movies.csv, line 3: expected 3 fields, saw 4",
        ),
        ("movies.csv", "", "movies.csv: file is empty"),
        (
            "ratings.csv",
            "userId,movieId,rating,timestamp\n1,10,4.0,1\n1,40,9.0,2\n",
            "ratings.csv, line 3: rating 9.0 is outside",
        ),
        (
            "ratings.csv",
            "userId,movieId,rating,timestamp\n1,10,4.0,1\n1.5,40,3.0,2\n",
            "ratings.csv, line 3: userId '1.5' is not a whole number",
        ),
        ("ratings.csv", "userId,movieId,rating,timestamp\n1,10,,1\n", "ratings.csv, line 2: rating is missing"),
        ("ratings.csv", "userId,movieId,rating\n1,10,4.0\n", "ratings.csv, line 1: missing column(s) timestamp"),
        (
            "ratings.csv",
            "userId,movieId,rating,timestamp\n1,10,4.0,1\n1,40,3.0,\n",
            "ratings.csv, line 3: timestamp is missing",
        ),
        (
            "ratings.csv",
            "userId,movieId,rating,timestamp\n1,10,4.0,1\n1,40,3.0,yesterday\n",
            "ratings.csv, line 3: timestamp 'yesterday' is not a number",
        ),
        (
            "ratings.csv",
            "userId,movieId,rating,timestamp\n1,10,4.0,964982703.5\n",
            "ratings.csv, line 2: timestamp '964982703.5' is not a whole number",
        ),
        (
            "ratings.csv",
            "userId,movieId,rating,timestamp\n1,10,4.0,1\n1,40,3.0,99999999999999999999\n",
            "ratings.csv, line 3: timestamp '99999999999999999999' is out of the 64-bit integer range",
        ),
        (
            "ratings.csv",
            "userId,movieId,rating,timestamp\n1,10,4.0,1\ninf,40,3.0,2\n",
            "ratings.csv, line 3: userId 'inf' is out of the 64-bit integer range",
        ),
        # ids are 1..2**31 - 1 in every file: a negative, zero or wider id would alias another once stored
        (
            "movies.csv",
            "movieId,title,genres\n10,A,Drama\n-5,B,Comedy\n",
            "movies.csv, line 3: movieId '-5' is not a positive 32-bit integer (1 to 2147483647)",
        ),
        ("movies.csv", "movieId,title,genres\n0,A,Drama\n", "movies.csv, line 2: movieId '0' is not a positive"),
        (
            "movies.csv",
            "movieId,title,genres\n10,A,Drama\n2147483648,B,Comedy\n",
            "movies.csv, line 3: movieId '2147483648' is not a positive 32-bit integer",
        ),
        (
            "ratings.csv",
            "userId,movieId,rating,timestamp\n1,10,4.0,1\n1,4294967306,3.0,2\n",
            "ratings.csv, line 3: movieId '4294967306' is not a positive 32-bit integer",
        ),
        ("tags.csv", "userId,movieId,tag,timestamp\n1,0,funny,1\n", "tags.csv, line 2: movieId '0' is not a positive"),
        # a dataset with nothing in it is refused at ingest, not passed on to fail later
        ("movies.csv", "movieId,title,genres\n", "movies.csv: has no movie rows (only a header)"),
        (
            "movies.csv",
            "movieId,title,genres\n30,Gamma (1992),(no genres listed)\n",
            "movies.csv: none of its 1 movies has a descriptor",
        ),
        ("ratings.csv", "userId,movieId,rating,timestamp\n", "ratings.csv: has no rating rows (only a header)"),
        (
            "ratings.csv",
            "userId,movieId,rating,timestamp\n1,30,4.0,1\n1,99,3.0,2\n",
            "ratings.csv: none of its 2 ratings is of a movie in the catalogue",
        ),
    ],
)
def test_malformed_files_name_the_file_line_and_problem(tiny: Path, name: str, text: str, expected: str) -> None:
    (tiny / name).write_text(text)
    with pytest.raises(DataError) as err:
        ingest_files(tiny)
    assert err.value.message.startswith(expected), err.value.message


def test_missing_file_is_named(tiny: Path) -> None:
    (tiny / "movies.csv").unlink()
    with pytest.raises(DataError, match=r"^movies.csv: file not found"):
        read_catalogue(tiny, tags_per_movie=5)


def test_bad_line_is_found_in_a_later_chunk(tiny: Path) -> None:
    rows = "\n".join(f"{u},10,4.0,1" for u in range(1, 12))
    (tiny / "ratings.csv").write_text(f"userId,movieId,rating,timestamp\n{rows}\n12,abc,4.0,1\n")
    c = read_catalogue(tiny, tags_per_movie=5)
    with pytest.raises(DataError, match=r"ratings.csv, line 13: movieId 'abc' is not a number"):
        read_ratings(tiny / "ratings.csv", c.movie_ids, chunk_rows=4)


def test_bad_timestamp_is_found_in_a_later_chunk(tiny: Path) -> None:
    rows = "\n".join(f"{u},10,4.0,{1_000_000_000 + u}" for u in range(1, 12))
    (tiny / "ratings.csv").write_text(f"userId,movieId,rating,timestamp\n{rows}\n12,10,4.0,2021-01-01\n")
    c = read_catalogue(tiny, tags_per_movie=5)
    with pytest.raises(DataError, match=r"^ratings.csv, line 13: timestamp '2021-01-01' is not a number"):
        read_ratings(tiny / "ratings.csv", c.movie_ids, chunk_rows=4)


def test_ids_are_refused_before_any_array_is_indexed_by_them(tiny: Path) -> None:
    # before: -2 was written into the lookup table's last-but-one slot, the row of the largest id
    write(tiny, "movies.csv", "movieId,title,genres\n10,A,Drama\n40,D,Horror\n-2,Neg,Comedy\n")
    with pytest.raises(DataError) as err:
        read_catalogue(tiny, tags_per_movie=5)
    assert err.value.details == {"file": "movies.csv", "line": 4}


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("genome-tags.csv", "tagId,tag\n0,zombies\n"),
        ("genome-scores.csv", "movieId,tagId,relevance\n10,-1,0.5\n"),
    ],
)
def test_genome_ids_are_checked_too(tiny: Path, name: str, text: str) -> None:
    write(tiny, "genome-tags.csv", "tagId,tag\n1,zombies\n")
    write(tiny, "genome-scores.csv", "movieId,tagId,relevance\n10,1,0.5\n")
    write(tiny, name, text)
    with pytest.raises(DataError, match=rf"^{name}, line 2: \w+ '-?\d+' is not a positive 32-bit integer"):
        read_catalogue(tiny, tags_per_movie=5)


HUGE = 300_000_000


def test_a_huge_valid_id_is_indexed_without_an_array_sized_by_it(tiny: Path) -> None:
    """One movieId (and genome tagId) of 300,000,000 is a valid id: ingested right, at no cost in memory.

    Before, ratings were looked up in an int32 table of max id + 2 entries (1.2 GB here) and genome tags in
    an int64 one (2.4 GB); tracemalloc sees numpy's allocations."""
    write(tiny, "movies.csv", f"movieId,title,genres\n10,A,Drama\n{HUGE},Huge (2020),Horror\n40,D,Comedy\n")
    write(tiny, "genome-tags.csv", f"tagId,tag\n{HUGE},zombies\n2,atmospheric\n")
    write(tiny, "genome-scores.csv", f"movieId,tagId,relevance\n{HUGE},{HUGE},0.9\n{HUGE},2,0.1\n")
    write(tiny, "ratings.csv", f"userId,movieId,rating,timestamp\n1,{HUGE},4.0,1\n1,10,3.0,2\n2,40,2.0,3\n2,7,1.0,4\n")
    tracemalloc.start()
    try:
        c = read_catalogue(tiny, tags_per_movie=1)
        r = read_ratings(tiny / "ratings.csv", c.movie_ids, chunk_rows=2)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20, f"peak {peak / 2**20:.0f} MiB"
    assert list(c.movie_ids) == [10, HUGE, 40] and c.movie_ids.dtype == np.int32
    assert c.descriptors(1) == ["Horror", "zombies"]
    assert r.rows_read == 4 and r.kept == 3  # movie 7 is not in movies.csv: skipped, as before
    assert [int(c.movie_ids[i]) for i in r.movie_index] == [HUGE, 10, 40]


def test_index_of_answers_positions_and_minus_one_for_any_other_id() -> None:
    ids = np.asarray([40, 10, HUGE, 2**31 - 1], dtype=np.int32)
    wanted = np.asarray([10, HUGE, 7, -2, 0, 41, 2**31 - 1, 2**40, 40])
    assert index_of(ids, wanted).tolist() == [1, 2, -1, -1, -1, -1, 3, -1, 0]
    assert index_of(np.zeros(0, np.int32), wanted).tolist() == [-1] * len(wanted)


@pytest.mark.parametrize("name", ["movies.csv", "ratings.csv", "tags.csv"])
def test_invalid_utf8_names_the_file_line_and_column(tiny: Path, name: str) -> None:
    lines = (tiny / name).read_bytes().splitlines(keepends=True)
    lines[2] = lines[2][:3] + b"\xc3\x28" + lines[2][3:]  # a lead byte with no continuation, on line 3
    (tiny / name).write_bytes(b"".join(lines))
    with pytest.raises(DataError) as err:
        ingest_files(tiny)
    assert err.value.message == f"{name}, line 3: not UTF-8 (byte 0xc3 at column 4)"
    assert err.value.details == {"file": name, "line": 3}


def test_invalid_utf8_in_a_later_chunk_of_ratings(tiny: Path) -> None:
    rows = "".join(f"{u},10,4.0,1\n" for u in range(1, 12)).encode()
    (tiny / "ratings.csv").write_bytes(b"userId,movieId,rating,timestamp\n" + rows + b"12,10,4.0,1\xff\n")
    c = read_catalogue(tiny, tags_per_movie=5)
    with pytest.raises(DataError, match=r"^ratings.csv, line 13: not UTF-8 \(byte 0xff at column 12\)$"):
        read_ratings(tiny / "ratings.csv", c.movie_ids, chunk_rows=4)


@pytest.fixture
def rooted(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(data root, a file outside it): the tiny dataset moved to <root>/ml."""
    root = tmp_path_factory.mktemp("root")
    shutil.move(str(tiny), root / "ml")
    outside = tmp_path_factory.mktemp("outside") / "secret.csv"
    outside.write_text("movieId,title,genres\n10,Secret,Drama\n")
    return root, outside


@pytest.mark.parametrize("name", ["movies.csv", "tags.csv", "ratings.csv", "fix.csv"])
def test_a_file_linked_outside_the_root_is_refused_without_saying_where(rooted: tuple[Path, Path], name: str) -> None:
    root, outside = rooted
    directory = root / "ml"
    (directory / name).unlink(missing_ok=True)
    (directory / name).symlink_to(outside)
    fix = directory / "fix.csv" if name == "fix.csv" else None

    def ingest() -> None:
        c = read_catalogue(directory, tags_per_movie=5, genres_fix_csv=fix, root=root)
        read_ratings(directory / "ratings.csv", c.movie_ids, root=root)

    with pytest.raises(PathNotAllowed) as err:
        ingest()
    assert err.value.message.startswith(f"{name} is a link to a file outside the data root")
    assert err.value.details == {"file": name}
    assert str(outside.parent) not in err.value.message


def test_a_file_linked_inside_the_root_is_read(rooted: tuple[Path, Path]) -> None:
    root, _ = rooted
    directory = root / "ml"
    shutil.move(str(directory / "movies.csv"), root / "shared-movies.csv")
    (directory / "movies.csv").symlink_to(Path("..") / "shared-movies.csv")
    c = read_catalogue(directory, tags_per_movie=5, root=root)
    assert list(c.movie_ids) == [10, 20, 40, 50]
    assert read_ratings(directory / "ratings.csv", c.movie_ids, root=root).kept == 3
