"""Uploaded MovieLens files: streamed by the API into artifacts, unpacked by the worker that ingests them.

    POST /v1/datasets (multipart) ──> uploads/<upload id>/<file>   (ArtifactWriter: chunks as they arrive)
      ──> ingest job {"upload": id, "files": [...]} ──> worker: files into a temporary directory
          (a .zip: ``extract_movielens``) ──> logic.ingest.ingest, as for a path ──> the upload is dropped

So a worker needs no disk shared with the API, and the same files give the same dataset id as a path
ingest. An upload lives until its job succeeds or fails (the janitor may send a lost job again meanwhile),
and expires with the job's record (``result_ttl_s``) should nothing ever run it.
"""

from __future__ import annotations

import stat
import zipfile
from pathlib import Path, PurePosixPath

from shared.errors import DataError
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
UNZIPPED_PER_UPLOADED = 8
"""An archive may unpack to this many times the upload limit (the MovieLens zips unpack to 3-5 times)."""


def drop_upload(artifacts: ArtifactStore, upload_id: str) -> None:
    """Delete every file of an upload (writes in progress included)."""
    artifacts.delete_under(upload_artifacts(upload_id))


def unpack_upload(
    artifacts: ArtifactStore, upload_id: str, files: list[str], into: Path, *, max_unzipped_bytes: int
) -> tuple[Path, Path | None]:
    """Write an upload's files under ``into``; answers (the MovieLens directory, the genres fix CSV or None).

    A missing file (the upload expired or was deleted) is a DataError naming it."""
    into.mkdir(parents=True, exist_ok=True)
    stored = {name: into / name for name in files if name in UPLOAD_PARTS.values()}
    for name, path in stored.items():
        if not artifacts.exists(upload_artifact(upload_id, name)):
            raise DataError(name, "the uploaded file is gone (expired or deleted); upload it again")
        with path.open("wb") as out:
            artifacts.copy_to(upload_artifact(upload_id, name), out)
    fix = stored.get(GENRES_FIX)
    if ARCHIVE in stored:
        return extract_movielens(stored[ARCHIVE], into / "archive", max_bytes=max_unzipped_bytes), fix
    return into, fix


def extract_movielens(archive: Path, into: Path, *, max_bytes: int) -> Path:
    """Extract the MovieLens files (``INPUT_FILES``) of a zip into ``into``, flat; answers ``into``.

    The folder holding ``movies.csv`` (at the top, or one folder down as GroupLens ships it) is the dataset;
    other members are not extracted. Refused with a DataError: not a zip, a member whose name climbs out
    (``..``, an absolute path) or is a symbolic link, no ``movies.csv`` or more than one, a missing
    ``ratings.csv``, or more than ``max_bytes`` once unpacked (counted as written, not as the zip claims).
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
            written = 0
            for name, info in picked.items():
                with zf.open(info) as src, (into / name).open("wb") as out:
                    while block := src.read(STREAM_BUFFER_BYTES):
                        written += len(block)
                        if written > max_bytes:
                            raise DataError("archive", f"unpacks to more than {max_bytes} bytes")
                        out.write(block)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError) as exc:
        raise DataError("archive", f"cannot be read as a zip file ({type(exc).__name__})") from None
    return into


def _check_member(info: zipfile.ZipInfo) -> None:
    name = info.filename
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (path.parts and path.parts[0].endswith(":")):
        raise DataError("archive", f"member {name[:200]!r} climbs out of the archive's folder")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise DataError("archive", f"member {name[:200]!r} is a symbolic link")
