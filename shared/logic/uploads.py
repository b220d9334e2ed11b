"""Uploaded MovieLens files: streamed by the API into artifacts, unpacked by the worker that ingests them.

    POST /v1/datasets (multipart) ──> uploads/<upload id>/<file>   (ArtifactWriter: chunks as they arrive)
      ──> ingest job {"upload": id, "files": [...]} ──> worker: files into a temporary directory
          (a .zip: ``extract_movielens``) ──> logic.ingest.ingest, as for a path ──> the upload is dropped

So a worker needs no disk shared with the API, and the same files give the same dataset id as a path
ingest. An archive unpacks within two bounds, both counted on the bytes as they are written, never on what the
zip's headers declare: ``UNZIPPED_PER_UPLOADED`` times the upload limit in all, and ``MAX_UNPACK_RATIO`` times the
compressed bytes it came from (a member's, and the archive's in all); past either the ingest fails (data_error)
with nothing kept: the temporary directory goes, and the upload with it. An upload lives until its job succeeds
or fails (the janitor may send a lost job again meanwhile), and expires with the job's record (``result_ttl_s``)
should nothing ever run it.
"""

from __future__ import annotations

import stat
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from shared.errors import DataError, NotFound
from shared.infra.keys import upload_artifact, upload_artifacts
from shared.logic.ingest import INPUT_FILES
from shared.store.artifacts import STREAM_BUFFER_BYTES, ArtifactStore

REQUIRED_FILES = ("movies.csv", "ratings.csv")
GENRES_FIX = "genres_fix.csv"
"""The stored name of the ``genres_fix_csv`` part: the movieId,genres CSV that fills ``(no genres listed)``."""
ARCHIVE = "archive.zip"
"""The stored name of the ``archive`` part: a MovieLens .zip as GroupLens distributes it."""
UPLOAD_PARTS = {**{name: name for name in INPUT_FILES}, "genres_fix_csv": GENRES_FIX, "archive": ARCHIVE}
"""Multipart part name -> the name it is stored under."""
UNZIPPED_PER_UPLOADED = 2
"""An archive may unpack to this many times the upload limit in all (2 GiB by default: ml-latest's 335 MB zip
unpacks to about 1.3 GB)."""
MAX_UNPACK_RATIO = 20
"""An archive, and each member of it, may unpack to at most this many times its compressed bytes: MovieLens CSVs
deflate 3 to 6 times (ml-latest-small: 3.4), a zip bomb hundreds to a thousand times."""
RATIO_SLACK_BYTES = 1 << 20
"""Bytes any member, and the archive, may unpack to whatever its ratio (a tiny file of few distinct rows)."""


def drop_upload(artifacts: ArtifactStore, upload_id: str) -> None:
    """Delete every file of an upload (writes in progress included)."""
    artifacts.delete_under(upload_artifacts(upload_id))


def unpack_upload(
    artifacts: ArtifactStore,
    upload_id: str,
    files: list[str],
    into: Path,
    *,
    max_unzipped_bytes: int,
    max_ratio: float = MAX_UNPACK_RATIO,
) -> tuple[Path, Path | None]:
    """Write an upload's files under ``into``; answers (the MovieLens directory, the genres fix CSV or None).

    A missing file (the upload expired or was deleted) is a DataError naming it; an archive past its bounds
    (``extract_movielens``) too."""
    into.mkdir(parents=True, exist_ok=True)
    stored = {name: into / name for name in files if name in UPLOAD_PARTS.values()}
    for name, path in stored.items():
        try:
            with path.open("wb") as out:
                artifacts.copy_to(upload_artifact(upload_id, name), out)
        except NotFound:  # before the copy, or during it
            raise DataError(name, "the uploaded file is gone (expired or deleted); upload it again") from None
    fix = stored.get(GENRES_FIX)
    if ARCHIVE in stored:
        archive = extract_movielens(
            stored[ARCHIVE], into / "archive", max_bytes=max_unzipped_bytes, max_ratio=max_ratio
        )
        return archive, fix
    return into, fix


def extract_movielens(archive: Path, into: Path, *, max_bytes: int, max_ratio: float = MAX_UNPACK_RATIO) -> Path:
    """Extract the MovieLens files (``INPUT_FILES``) of a zip into ``into``, flat; answers ``into``.

    The folder holding ``movies.csv`` (at the top, or one folder down as GroupLens ships it) is the dataset;
    other members are not extracted. Refused with a DataError: not a zip, a member whose name climbs out
    (``..``, an absolute path) or is a symbolic link, no ``movies.csv`` or more than one, a missing
    ``ratings.csv``, or once unpacking passes a bound (``UnpackBudget``); what was written is then deleted.
    """
    if not zipfile.is_zipfile(archive):
        raise DataError("archive", "is not a zip file (send the MovieLens .zip as GroupLens distributes it)")
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            for info in members:
                _check_member(info)
            folders = [
                PurePosixPath(i.filename).parent for i in members if PurePosixPath(i.filename).name == "movies.csv"
            ]
            if len(folders) != 1:
                problem = "holds no movies.csv" if not folders else "holds more than one movies.csv"
                raise DataError("archive", problem)
            wanted = {str(folders[0] / name): name for name in INPUT_FILES}
            picked = {wanted[i.filename]: i for i in members if i.filename in wanted and not i.is_dir()}
            for name in REQUIRED_FILES:
                if name not in picked:
                    raise DataError("archive", f"has no {name} beside movies.csv")
            into.mkdir(parents=True, exist_ok=True)
            budget = UnpackBudget(archive_bytes=archive.stat().st_size, max_bytes=max_bytes, max_ratio=max_ratio)
            try:
                for name, info in picked.items():
                    _unpack_member(zf, info, into / name, budget)
            except BaseException:
                for name in picked:
                    (into / name).unlink(missing_ok=True)
                raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError, zlib.error) as exc:
        raise DataError("archive", f"cannot be read as a zip file ({type(exc).__name__})") from None
    return into


class UnpackBudget:
    """The bounds of one archive's unpacking, counted on the bytes written:

    - in all, at most ``max_bytes`` and at most ``max_ratio`` times the archive's size on disk (what it really
      is, whatever its headers say);
    - per member, at most ``max_ratio`` times the compressed bytes it can come from: its declared compressed size,
      which is all zipfile feeds the decompressor (a smaller lie cuts the member short, a CRC error), and never
      more than the archive itself;
    - the ratios each with ``RATIO_SLACK_BYTES`` of slack.
    """

    def __init__(self, *, archive_bytes: int, max_bytes: int, max_ratio: float) -> None:
        self.archive_bytes = max(1, archive_bytes)
        self.max_ratio = max_ratio
        self.limit = min(max_bytes, int(max_ratio * self.archive_bytes) + RATIO_SLACK_BYTES)
        self.max_bytes = max_bytes
        self.written = 0

    def member_limit(self, info: zipfile.ZipInfo) -> int:
        return int(self.max_ratio * min(info.compress_size, self.archive_bytes)) + RATIO_SLACK_BYTES

    def take(self, n: int, *, member: zipfile.ZipInfo, member_written: int) -> None:
        """Count ``n`` more bytes of ``member`` (``member_written`` of it so far, these included); DataError past
        a bound, saying which."""
        self.written += n
        if self.written > self.max_bytes:
            cap = f"{UNZIPPED_PER_UPLOADED} x MOVIEREC_MAX_UPLOAD_BYTES"
            raise DataError("archive", f"unpacks to more than {self.max_bytes} bytes ({cap}); refused, nothing kept")
        if self.written > self.limit or member_written > self.member_limit(member):
            name = member.filename[:200]
            raise DataError(
                "archive",
                f"unpacks to more than {self.max_ratio:g} times its compressed size (member {name!r}): "
                "refused as a zip bomb, nothing kept",
            )


def _unpack_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path, budget: UnpackBudget) -> None:
    written = 0
    with zf.open(info) as src, path.open("wb") as out:
        while block := src.read(STREAM_BUFFER_BYTES):
            written += len(block)
            budget.take(len(block), member=info, member_written=written)
            out.write(block)


def _check_member(info: zipfile.ZipInfo) -> None:
    name = info.filename
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (path.parts and path.parts[0].endswith(":")):
        raise DataError("archive", f"member {name[:200]!r} climbs out of the archive's folder")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise DataError("archive", f"member {name[:200]!r} is a symbolic link")
