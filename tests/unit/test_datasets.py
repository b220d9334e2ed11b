"""Path confinement and content-addressed dataset ids."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from shared.errors import PathNotAllowed
from shared.logic.ingest import DatasetOptions, confine, dataset_id
from tests.helpers import SMALL


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "root" / "ml").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    return tmp_path / "root"


def test_paths_inside_the_root_resolve(root: Path) -> None:
    assert confine("ml", root=root) == (root / "ml").resolve()
    assert confine(str(root / "ml"), root=root) == (root / "ml").resolve()
    assert confine("ml/../ml", root=root) == (root / "ml").resolve()
    os.symlink(root / "ml", root / "link-inside")
    assert confine("link-inside", root=root) == (root / "ml").resolve()


@pytest.mark.parametrize("path", ["..", "../outside", "ml/../../outside", "/etc", "/", "", "ml\x00", "ml\ud800"])
def test_paths_outside_the_root_are_refused(root: Path, path: str) -> None:
    with pytest.raises(PathNotAllowed):
        confine(path, root=root)


def test_a_symlink_escaping_the_root_is_refused(root: Path) -> None:
    os.symlink(root.parent / "outside", root / "escape")
    with pytest.raises(PathNotAllowed, match="outside the data root"):
        confine("escape", root=root)
    with pytest.raises(PathNotAllowed):
        confine("escape/sub", root=root)


def test_dataset_id_is_a_content_hash(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(SMALL, a)
    shutil.copytree(SMALL, b)
    opts = DatasetOptions(tags_per_movie=5)
    assert dataset_id(a, opts) == dataset_id(b, opts)
    assert dataset_id(a, opts) != dataset_id(a, DatasetOptions(tags_per_movie=3))
    with (b / "tags.csv").open("a") as f:
        f.write("1,1,extra,1\n")
    assert dataset_id(a, opts) != dataset_id(b, opts)
