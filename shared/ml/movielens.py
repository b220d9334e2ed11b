"""Reading a MovieLens directory into a catalogue (movies and their descriptors) and per-user ratings.

Pure functions over files and arrays; nothing here touches Redis. The layouts of ml-latest-small, ml-25m,
ml-32m and ml-latest share these files:

    movies.csv          movieId,title,genres              required
    ratings.csv         userId,movieId,rating,timestamp   required; read in chunks (27M rows fit in < 3 GB)
    tags.csv            userId,movieId,tag,timestamp      optional; every column read (the events are kept)
    genome-tags.csv     tagId,tag                         optional, with genome-scores.csv
    genome-scores.csv   movieId,tagId,relevance           optional
    links.csv           movieId,imdbId,tmdbId             optional, not used for descriptors

A movie's descriptors are its genres (``|``-split, ``(no genres listed)`` removed, filled from an optional
``movieId,genres`` CSV) followed by its top-k tags: by genome relevance where the movie is in the genome,
else by user-tag count (tags lower-cased and stripped; ties go to the alphabetically first tag). As in the
notebook, a tag that repeats a genre ("comedy" beside "Comedy") is kept: on ml-latest-small with k = 5 this
gives its 24,884 descriptor strings, 1,218 of them unique. Movies left with no descriptor are dropped and
counted; catalogue order is ``movies.csv`` order after dropping.

The catalogue also keeps what its descriptors are made of (``DescriptorParts``): each movie's genres, its
genome tags, and every user-tag event (user, movie, tag, time), so that ``descriptors_from`` can rebuild the
descriptors from only some of the events (those written before an evaluation's cut, shared/logic/descriptors.py).
With every event kept it gives the catalogue's own arrays exactly: ``read_catalogue`` builds them that way.

Every problem with the input raises ``DataError`` naming the file, the line (1-based, header = line 1)
where it applies, and what is wrong.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from shared.errors import DataError, PathNotAllowed

NO_GENRES = "(no genres listed)"
RATINGS_CHUNK_ROWS = 2_000_000
"""Rows of ratings.csv parsed at a time; bounds the parser's working memory."""

MIN_RATING, MAX_RATING = 0.5, 5.0
MAX_ID = int(np.iinfo(np.int32).max)
"""Movie, user and tag ids are 1..MAX_ID: stored as int32, and never zero or negative (no id aliases another)."""
_TOKENIZE = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")


@dataclass(frozen=True)
class DescriptorParts:
    """What a catalogue's descriptors are made of, per catalogue row; every string is one of ``terms``.

    Movie i's descriptors are its genres, then either its genome tags (cut to k) when it is in the genome, or
    else its top-k user tags counted over the tag events kept (``descriptors_from``). Genome scores carry no
    time, so they stay whatever is cut; user tags do: each event keeps its user and timestamp. Events of a
    movie in the genome are kept too (they never reach its descriptors); events with an empty tag, or of a
    movie not in the catalogue, are not.
    """

    terms: list[str]  # distinct, sorted by code point: term id order is the alphabetical order ties go by
    genre_indptr: np.ndarray  # (n + 1,) int64: movie i's genres are terms[genre_indices[p:q]]
    genre_indices: np.ndarray  # int32
    genome_indptr: np.ndarray  # (n + 1,) int64: movie i's genome tags, most relevant first (ingest's k of them)
    genome_indices: np.ndarray  # int32
    in_genome: np.ndarray  # (n,) bool: the movie takes genome tags, never user tags
    tag_user: np.ndarray  # (t,) int32 userId of each tag event, in tags.csv order
    tag_movie: np.ndarray  # (t,) int32 catalogue row
    tag_text: np.ndarray  # (t,) int32 into terms: the tag lower-cased and stripped, never empty
    tag_time: np.ndarray  # (t,) int64 seconds since the epoch

    @property
    def n(self) -> int:
        return len(self.in_genome)

    def take(self, rows: np.ndarray) -> DescriptorParts:
        """These parts for catalogue rows ``rows`` (ascending), in that order; events of other rows go."""
        rows = np.asarray(rows, dtype=np.int64)
        new_row = np.full(self.n, -1, dtype=np.int64)
        new_row[rows] = np.arange(len(rows))
        keep = new_row[self.tag_movie] >= 0
        genre_indptr, genre_indices = _take_rows(self.genre_indptr, self.genre_indices, rows)
        genome_indptr, genome_indices = _take_rows(self.genome_indptr, self.genome_indices, rows)
        return replace(
            self,
            genre_indptr=genre_indptr,
            genre_indices=genre_indices,
            genome_indptr=genome_indptr,
            genome_indices=genome_indices,
            in_genome=self.in_genome[rows],
            tag_user=self.tag_user[keep],
            tag_movie=new_row[self.tag_movie[keep]].astype(np.int32),
            tag_text=self.tag_text[keep],
            tag_time=self.tag_time[keep],
        )


class Descriptors(NamedTuple):
    """Descriptors as a CSR over ``vocabulary`` (a catalogue's ``desc_indptr``, ``desc_indices``, ``vocabulary``)."""

    indptr: np.ndarray  # (n + 1,) int64
    indices: np.ndarray  # (nnz,) int32, into vocabulary
    vocabulary: list[str]  # unique descriptor strings, in order of first appearance


@dataclass(frozen=True)
class Catalogue:
    """Movies kept, in catalogue order, with descriptors as a CSR over ``vocabulary``."""

    movie_ids: np.ndarray  # (n,) int32
    titles: list[str]  # n
    desc_indptr: np.ndarray  # (n + 1,) int64
    desc_indices: np.ndarray  # (nnz,) int32, into vocabulary
    vocabulary: list[str]  # unique descriptor strings, in order of first appearance
    movies_total: int
    tag_source: str  # "genome", "tags", "genome+tags" or "none"
    parts: DescriptorParts | None = None  # what the descriptors are made of (read_catalogue's always has them)

    @property
    def dropped(self) -> int:
        return self.movies_total - len(self.movie_ids)

    def descriptors(self, i: int) -> list[str]:
        lo, hi = self.desc_indptr[i], self.desc_indptr[i + 1]
        return [self.vocabulary[j] for j in self.desc_indices[lo:hi]]


@dataclass(frozen=True)
class Ratings:
    """Ratings grouped by user (ascending userId): a CSR of catalogue indices, rating values and timestamps.

    Within a user, ratings keep the file's order (MovieLens files are sorted by userId, then movieId).
    """

    user_ids: np.ndarray  # (u,) int32
    indptr: np.ndarray  # (u + 1,) int64
    movie_index: np.ndarray  # (nnz,) int32, rows of the catalogue
    values: np.ndarray  # (nnz,) float32
    timestamps: np.ndarray  # (nnz,) int64, seconds since the epoch, aligned with values
    rows_read: int  # every rating row in the file, also those of dropped or unknown movies

    @property
    def kept(self) -> int:
        return len(self.values)


# -- CSV reading with errors that name the file and the line ----------------------------------------------
def confine_file(path: Path, *, root: Path) -> None:
    """Refuse ``path`` unless it, symlinks followed, lies inside ``root`` (itself resolved).

    The error names the file as given (its name), never where a link leads: that could be any file of the
    server. Called for every input file before it is opened (also for hashing, ``logic.ingest.ingest``).
    """
    try:
        resolved, top = path.resolve(), root.resolve()
    except (OSError, RuntimeError, ValueError):  # a symlink loop, a name no filesystem holds
        raise PathNotAllowed(f"{path.name} is not a usable file", details={"file": path.name}) from None
    if top not in resolved.parents:
        raise PathNotAllowed(
            f"{path.name} is a link to a file outside the data root; copy the file into the dataset's folder",
            details={"file": path.name},
        )


def _require(path: Path, root: Path | None = None) -> None:
    if root is not None:
        confine_file(path, root=root)
    if not path.is_file():
        raise DataError(path.name, "file not found")


def _first_bad_utf8(path: Path) -> tuple[int, int, int] | None:
    """(line, column, byte) of the first byte of ``path`` that is not UTF-8, all 1-based; None if it all is.

    Lines are physical lines (``\\n`` never occurs inside a multi-byte UTF-8 sequence, so splitting there
    is safe); the file is read a line at a time, so this costs no more memory than its longest line.
    """
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                return number, exc.start + 1, raw[exc.start]
    return None


def _csv_chunks(
    path: Path, *, columns: dict[str, str], chunksize: int | None = None, root: Path | None = None
) -> Iterator[tuple[int, pd.DataFrame]]:
    """Yield (first file line of the chunk, frame) with ``columns`` checked and converted.

    ``columns`` maps a column name to "int", "id" (an int from 1 to 2**31 - 1: movie, user and tag ids),
    "float" or "str". Numeric columns are parsed by pandas' fast path; only a chunk that fails is inspected
    again to find the first bad line. With ``root``, the file must lie inside it (``confine_file``).
    """
    _require(path, root)
    try:
        reader = pd.read_csv(
            path,
            # All columns are parsed (no usecols) so that a row with too many fields is an error, not
            # silently cut; chunks keep the cost of the unused ones small.
            index_col=False,
            dtype={c: str for c, kind in columns.items() if kind == "str"},
            keep_default_na=False,
            na_values={c: [""] for c, kind in columns.items() if kind != "str"},
            chunksize=chunksize or 1 << 62,
            encoding="utf-8",
            engine="c",
        )
        line = 2
        for raw in reader:
            missing = [c for c in columns if c not in raw.columns]
            if missing:
                raise DataError(path.name, f"missing column(s) {', '.join(missing)}", line=1)
            frame = raw[list(columns)]
            for name, kind in columns.items():
                if kind != "str":
                    frame[name] = _numeric(frame[name], path=path, column=name, first_line=line, kind=kind)
            yield line, frame
            line += len(frame)
    except pd.errors.EmptyDataError:
        raise DataError(path.name, "file is empty; expected a header line") from None
    except pd.errors.ParserError as exc:
        m = _TOKENIZE.search(str(exc))
        if m:
            raise DataError(path.name, f"expected {m[1]} fields, saw {m[3]}", line=int(m[2])) from None
        raise DataError(path.name, "not a readable CSV file") from None
    except UnicodeDecodeError:
        where = _first_bad_utf8(path)
        if where is None:  # pandas saw what a line-by-line decode does not: say so without a line
            raise DataError(path.name, "not UTF-8 text") from None
        number, column, byte = where
        raise DataError(path.name, f"not UTF-8 (byte 0x{byte:02x} at column {column})", line=number) from None


def _numeric(col: pd.Series, *, path: Path, column: str, first_line: int, kind: str) -> pd.Series:
    values = col if pd.api.types.is_numeric_dtype(col) else pd.to_numeric(col, errors="coerce")
    bad = values.isna().to_numpy()
    huge = np.zeros(len(values), dtype=bool)
    if kind in ("int", "id") and not bad.any():
        as_float = values.to_numpy(dtype=np.float64)
        if not pd.api.types.is_signed_integer_dtype(values.dtype):  # int64 fits by construction
            huge = ~(np.abs(as_float) < 2.0**63)  # would wrap around in int64; inf too
        bad = huge | (as_float != np.floor(as_float))
    if bad.any():
        i = int(np.argmax(bad))
        shown = str(col.iloc[i])[:40]
        problem = f"{column} is missing" if shown in ("", "nan") else f"{column} {shown!r} is not a number"
        if huge[i]:
            problem = f"{column} {shown!r} is out of the 64-bit integer range"
        elif kind in ("int", "id") and shown not in ("", "nan") and not np.isnan(values.iloc[i]):
            problem = f"{column} {shown!r} is not a whole number"
        raise DataError(path.name, problem, line=first_line + i)
    if kind == "id":
        ints = values.to_numpy(dtype=np.int64)
        out = (ints < 1) | (ints > MAX_ID)
        if out.any():
            i = int(np.argmax(out))
            shown = str(col.iloc[i])[:40]
            problem = f"{column} {shown!r} is not a positive 32-bit integer (1 to {MAX_ID})"
            raise DataError(path.name, problem, line=first_line + i)
        return pd.Series(ints, index=values.index)
    return values.astype(np.int64 if kind == "int" else np.float64)


def _read_csv(path: Path, columns: dict[str, str], root: Path | None = None) -> pd.DataFrame:
    frames = [f for _, f in _csv_chunks(path, columns=columns, root=root)]
    return frames[0] if frames else pd.DataFrame({c: [] for c in columns})


# -- catalogue -------------------------------------------------------------------------------------------
def _split_genres(genres: str) -> list[str]:
    return [g.strip() for g in genres.split("|") if g.strip() and g.strip() != NO_GENRES]


def read_movies(path: Path, root: Path | None = None) -> pd.DataFrame:
    movies = _read_csv(path, {"movieId": "id", "title": "str", "genres": "str"}, root)
    if movies.empty:
        raise DataError(path.name, "has no movie rows (only a header); a dataset needs at least one movie")
    dup = movies["movieId"].duplicated().to_numpy()
    if dup.any():
        i = int(np.argmax(dup))
        raise DataError(path.name, f"movieId {movies['movieId'].iloc[i]} appears twice", line=i + 2)
    return movies


def read_genres_fix(path: Path, root: Path | None = None) -> dict[int, list[str]]:
    fix = _read_csv(path, {"movieId": "id", "genres": "str"}, root)
    return {int(m): _split_genres(g) for m, g in zip(fix["movieId"], fix["genres"], strict=True)}


def top_genome_tags(scores: pd.DataFrame, genome_tags: pd.DataFrame, k: int) -> dict[int, list[str]]:
    """Top-k genome tags per movie by relevance; ties to the alphabetically first tag.

    The genome is dense (every movie x ~1,128 tags: 15M rows in ml-25m), so the scores become a
    (movies, tags) matrix with tags in alphabetical order, and a stable per-row sort picks the top k.
    """
    names = genome_tags["tag"].astype(str).to_numpy()
    tag_ids = genome_tags["tagId"].to_numpy(dtype=np.int64)
    alphabetical = np.argsort(names, kind="stable")
    column_of_row = np.empty(len(names), dtype=np.int64)  # genome-tags row -> its column (alphabetical rank)
    column_of_row[alphabetical] = np.arange(len(names))
    row_of_tag = index_of(tag_ids, scores["tagId"].to_numpy(dtype=np.int64))  # no array sized by the largest id
    column = np.where(row_of_tag >= 0, column_of_row[np.maximum(row_of_tag, 0)], -1) if len(names) else row_of_tag
    keep = column >= 0
    movies, row = np.unique(scores["movieId"].to_numpy(dtype=np.int64)[keep], return_inverse=True)
    matrix = np.full((len(movies), len(names)), -np.inf)  # (movies, tags); a missing score is never picked
    matrix[row, column[keep]] = scores["relevance"].to_numpy(dtype=np.float64)[keep]
    top = np.argsort(-matrix, axis=1, kind="stable")[:, :k]  # (movies, k) columns, best first
    picked = np.take_along_axis(matrix, top, axis=1) > -np.inf
    sorted_names = names[alphabetical]
    return {
        int(m): [str(sorted_names[c]) for c, ok in zip(cols, oks, strict=True) if ok]
        for m, cols, oks in zip(movies.tolist(), top, picked, strict=True)
    }


def read_tag_events(path: Path, root: Path | None = None) -> pd.DataFrame:
    """tags.csv as events: userId, movieId, tag (lower-cased and stripped, as tags are counted; empty ones left
    out) and timestamp, in file order."""
    tags = _read_csv(path, {"userId": "id", "movieId": "id", "tag": "str", "timestamp": "int"}, root)
    text = tags["tag"].str.strip().str.lower()
    events: pd.DataFrame = tags.assign(tag=text)[text.to_numpy() != ""]
    return events.reset_index(drop=True)


def _take_rows(indptr: np.ndarray, indices: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The CSR (indptr, indices) of rows ``rows`` of another, in that order."""
    counts = np.diff(indptr)[rows]
    out = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(counts, out=out[1:])
    at = np.repeat(indptr[rows] - out[:-1], counts) + np.arange(out[-1])  # (nnz',) positions in indices
    return out, np.asarray(indices[at], dtype=np.int32)


def _csr(lists: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    indptr = np.zeros(len(lists) + 1, dtype=np.int64)
    np.cumsum([len(x) for x in lists], out=indptr[1:])
    return indptr, np.asarray([i for x in lists for i in x], dtype=np.int32)


def descriptors_from(parts: DescriptorParts, keep: np.ndarray | None, *, tags_per_movie: int) -> Descriptors:
    """Each movie's descriptors from ``parts``, its user tags counted over the events ``keep`` (t,) bool marks
    (None: every event): genres, then the first ``tags_per_movie`` genome tags for a movie in the genome, else
    its top ``tags_per_movie`` kept user tags by count, ties to the alphabetically first.

    With every event kept this is the catalogue's own (desc_indptr, desc_indices, vocabulary), exactly;
    ``tags_per_movie`` is then the dataset's. A smaller one cuts the genome's lists too; a larger one cannot
    find genome tags that ingest did not keep. A movie left with nothing (no genres, not in the genome, every
    user tag cut) keeps its row, empty: the rows are the catalogue's, whatever is cut.
    """
    n, k = parts.n, tags_per_movie
    if k < 0:
        raise ValueError("tags_per_movie must be >= 0")
    events = np.ones(len(parts.tag_movie), dtype=bool) if keep is None else np.asarray(keep, dtype=bool)
    if events.shape != parts.tag_movie.shape:
        raise ValueError(f"keep has shape {events.shape}; there are {len(parts.tag_movie)} tag events")
    # user tags: count (movie, tag) over the kept events of movies outside the genome, top k of each movie
    counted = events & ~parts.in_genome[parts.tag_movie]
    width = max(1, len(parts.terms))
    pair, count = np.unique(
        parts.tag_movie[counted].astype(np.int64) * width + parts.tag_text[counted], return_counts=True
    )
    movie, text = pair // width, pair % width
    order = np.lexsort((text, -count, movie))  # by movie, count descending, then term id (= alphabetical)
    movie, text = movie[order], text[order]
    first = np.searchsorted(movie, movie)  # (p,) where each movie's pairs start
    user = np.arange(len(movie)) - first < k
    # genome tags: the first k of each genome movie's list
    genome_count = np.diff(parts.genome_indptr)
    genome_movie = np.repeat(np.arange(n), genome_count)
    genome_rank = np.arange(len(genome_movie)) - parts.genome_indptr[genome_movie]
    genome = (genome_rank < k) & parts.in_genome[genome_movie]
    # genres first, then the movie's tags (one source per movie): a stable sort by (movie, part)
    genre_movie = np.repeat(np.arange(n), np.diff(parts.genre_indptr))
    rows = np.concatenate([genre_movie, genome_movie[genome], movie[user]])
    part = np.concatenate([np.zeros(len(genre_movie), np.int8), np.ones(int(genome.sum()) + int(user.sum()), np.int8)])
    terms = np.concatenate([parts.genre_indices, parts.genome_indices[genome], text[user]]).astype(np.int64)
    order = np.lexsort((part, rows))  # stable: within a part, the order given
    rows, terms = rows[order], terms[order]
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
    # vocabulary in order of first appearance, as read_catalogue's walk over the movies builds it
    used, at = np.unique(terms, return_index=True)
    by_first = used[np.argsort(at, kind="stable")]
    new_id = np.zeros(width, dtype=np.int32)
    new_id[by_first] = np.arange(len(by_first), dtype=np.int32)
    return Descriptors(indptr, new_id[terms], [parts.terms[int(t)] for t in by_first])


def read_catalogue(
    directory: Path, *, tags_per_movie: int, genres_fix_csv: Path | None = None, root: Path | None = None
) -> Catalogue:
    """The catalogue of ``directory``; with ``root``, every file read must lie inside it, symlinks followed
    (``confine_file``). A DataError when movies.csv has no movie, or when no movie has a descriptor."""
    movies = read_movies(directory / "movies.csv", root)
    fix = read_genres_fix(genres_fix_csv, root) if genres_fix_csv is not None else {}

    genome: dict[int, list[str]] = {}
    scores_path, genome_tags_path = directory / "genome-scores.csv", directory / "genome-tags.csv"
    if scores_path.exists() or genome_tags_path.exists():
        _require(genome_tags_path, root)
        _require(scores_path, root)
        genome_tags = _read_csv(genome_tags_path, {"tagId": "id", "tag": "str"}, root)
        scores = _read_csv(scores_path, {"movieId": "id", "tagId": "id", "relevance": "float"}, root)
        genome = top_genome_tags(scores, genome_tags, tags_per_movie)
    all_ids = movies["movieId"].to_numpy(dtype=np.int64)
    events = pd.DataFrame({"userId": [], "movieId": [], "tag": [], "timestamp": []})
    if (directory / "tags.csv").exists():
        events = read_tag_events(directory / "tags.csv", root)
    event_row = index_of(all_ids, events["movieId"].to_numpy(dtype=np.int64))  # (t,) movies.csv row, -1: none
    known = event_row >= 0

    genres: list[list[str]] = []
    for mid, listed in zip(all_ids.tolist(), movies["genres"], strict=True):
        own = _split_genres(listed)
        genres.append(fix[mid] if not own and mid in fix else own)
    genome_lists = [genome.get(mid, []) for mid in all_ids.tolist()]
    event_text = events["tag"].to_numpy(dtype=object)[known]
    terms = sorted({*(g for x in genres for g in x), *(t for x in genome_lists for t in x), *event_text.tolist()})
    term_id = {t: i for i, t in enumerate(terms)}
    genre_indptr, genre_indices = _csr([[term_id[g] for g in x] for x in genres])
    genome_indptr, genome_indices = _csr([[term_id[t] for t in x] for x in genome_lists])
    every = DescriptorParts(
        terms=terms,
        genre_indptr=genre_indptr,
        genre_indices=genre_indices,
        genome_indptr=genome_indptr,
        genome_indices=genome_indices,
        in_genome=np.asarray([mid in genome for mid in all_ids.tolist()], dtype=bool),
        tag_user=events["userId"].to_numpy(dtype=np.int32)[known],
        tag_movie=event_row[known].astype(np.int32),
        tag_text=np.asarray([term_id[t] for t in event_text.tolist()], dtype=np.int32),
        tag_time=events["timestamp"].to_numpy(dtype=np.int64)[known],
    )
    # movies with no descriptor at all (every event counted) are dropped; the rest keep movies.csv order
    kept = np.flatnonzero(np.diff(descriptors_from(every, None, tags_per_movie=tags_per_movie).indptr) > 0)
    if len(kept) == 0:
        raise DataError(
            "movies.csv",
            f"none of its {len(movies):,} movies has a descriptor (genres, or tags in tags.csv or the genome); "
            "nothing to ingest",
        )
    parts = every.take(kept)
    indptr, indices, vocabulary = descriptors_from(parts, None, tags_per_movie=tags_per_movie)
    tags_of = np.diff(indptr) > np.diff(parts.genre_indptr)  # (n,) the movie has a tag among its descriptors
    used_genome = bool((tags_of & parts.in_genome).any())
    used_user = bool((tags_of & ~parts.in_genome).any())
    source = {(True, True): "genome+tags", (True, False): "genome", (False, True): "tags"}.get(
        (used_genome, used_user), "none"
    )
    return Catalogue(
        movie_ids=all_ids[kept].astype(np.int32),
        titles=movies["title"].to_numpy(dtype=object)[kept].tolist(),
        desc_indptr=indptr,
        desc_indices=indices,
        vocabulary=vocabulary,
        movies_total=len(movies),
        tag_source=source,
        parts=parts,
    )


# -- ratings ---------------------------------------------------------------------------------------------
def index_of(ids: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """For each of ``wanted``, its position in ``ids`` (distinct), else -1; int64, shaped like ``wanted``.

    A binary search over the sorted ids: memory is O(len(ids) + len(wanted)) whatever the ids' values, so
    one movieId of 300,000,000 costs nothing more than one of 300 (an array indexed by id would take 1.2 GB),
    and an id that is not in ``ids`` (negative, zero, past the largest) can only answer -1.
    """
    wanted = np.asarray(wanted, dtype=np.int64)
    if len(ids) == 0:
        return np.full(wanted.shape, -1, dtype=np.int64)
    order = np.argsort(ids, kind="stable")
    ordered = np.asarray(ids, dtype=np.int64)[order]
    at = np.minimum(np.searchsorted(ordered, wanted), len(ordered) - 1)
    return np.where(ordered[at] == wanted, order[at], -1)


def read_ratings(
    path: Path,
    movie_ids: np.ndarray,
    *,
    chunk_rows: int = RATINGS_CHUNK_ROWS,
    on_chunk: Callable[[int], None] | None = None,
    root: Path | None = None,
) -> Ratings:
    """Ratings of the catalogue's movies as a per-user CSR; ``on_chunk(rows_so_far)`` reports progress.

    A rating of a movie not in ``movie_ids`` (not in movies.csv, or dropped for want of a descriptor) is
    counted in ``rows_read`` and skipped. A DataError when the file has no rating row, or none of the
    catalogue's movies; with ``root``, when the file (symlinks followed) lies outside it.
    """
    users_parts: list[np.ndarray] = []
    movie_parts: list[np.ndarray] = []
    value_parts: list[np.ndarray] = []
    time_parts: list[np.ndarray] = []
    rows = 0
    columns = {"userId": "id", "movieId": "id", "rating": "float", "timestamp": "int"}
    for line, frame in _csv_chunks(path, columns=columns, chunksize=chunk_rows, root=root):
        users = frame["userId"].to_numpy()
        movies = frame["movieId"].to_numpy()
        values = frame["rating"].to_numpy()
        bad = (values < MIN_RATING) | (values > MAX_RATING)
        if bad.any():
            i = int(np.argmax(bad))
            raise DataError(path.name, f"rating {values[i]} is outside {MIN_RATING}..{MAX_RATING}", line=line + i)
        # userId and movieId are 1..MAX_ID ("id" columns, checked by _numeric); the movie's catalogue row by a
        # binary search (sorting the catalogue's ids each chunk is noise next to parsing it)
        index = index_of(movie_ids, movies)
        keep = index >= 0
        users_parts.append(users[keep].astype(np.int32))
        movie_parts.append(index[keep].astype(np.int32))
        value_parts.append(values[keep].astype(np.float32))
        time_parts.append(frame["timestamp"].to_numpy()[keep])  # int64 (_numeric's answer)
        rows += len(frame)
        if on_chunk is not None:
            on_chunk(rows)

    users = np.concatenate(users_parts) if users_parts else np.zeros(0, np.int32)
    del users_parts
    movie_index = np.concatenate(movie_parts) if movie_parts else np.zeros(0, np.int32)
    del movie_parts
    values = np.concatenate(value_parts) if value_parts else np.zeros(0, np.float32)
    del value_parts
    timestamps = np.concatenate(time_parts) if time_parts else np.zeros(0, np.int64)
    del time_parts
    if rows == 0:
        raise DataError(path.name, "has no rating rows (only a header); a dataset needs at least one rating")
    if len(values) == 0:
        raise DataError(
            path.name, f"none of its {rows:,} ratings is of a movie in the catalogue (movies.csv, with descriptors)"
        )
    if len(users) and np.any(users[1:] < users[:-1]):
        # MovieLens files are sorted by user already; anything else is sorted here, stably.
        order = np.argsort(users, kind="stable")
        users, movie_index, values, timestamps = users[order], movie_index[order], values[order], timestamps[order]
        del order
    user_ids, counts = np.unique(users, return_counts=True)
    indptr = np.zeros(len(user_ids) + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    return Ratings(
        user_ids=user_ids.astype(np.int32),
        indptr=indptr,
        movie_index=movie_index,
        values=values,
        timestamps=timestamps,
        rows_read=rows,
    )
