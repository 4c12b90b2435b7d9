"""tpvkit.utils.io: atomic writes honour the umask; output paths are checked before any work."""

from __future__ import annotations

import os

import pytest

from tpvkit.errors import TpvkitError
from tpvkit.utils.io import (
    atomic_write_text,
    check_output_dir,
    check_output_file,
    copy_atomic,
)


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_atomic_writes_get_the_mode_an_ordinary_open_gives(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        with open(tmp_path / "b.txt", "w") as fh:
            fh.write("x")
    finally:
        os.umask(old)
    mode = os.stat(tmp_path / "a.txt").st_mode & 0o777
    assert mode == os.stat(tmp_path / "b.txt").st_mode & 0o777 == 0o666 & ~umask


def test_copy_atomic_replaces_the_destination(tmp_path):
    (tmp_path / "a").write_text("new")
    (tmp_path / "latest").write_text("old")
    copy_atomic(tmp_path / "a", tmp_path / "latest")
    assert (tmp_path / "latest").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "latest"]


def test_copy_atomic_makes_an_independent_file(tmp_path):
    # 0.2 hard-linked latest.pth: truncating it in place truncated the iter_*.pth as well.
    (tmp_path / "a").write_bytes(b"checkpoint bytes")
    copy_atomic(tmp_path / "a", tmp_path / "latest")
    assert os.stat(tmp_path / "a").st_ino != os.stat(tmp_path / "latest").st_ino
    with open(tmp_path / "latest", "r+b") as fh:
        fh.truncate(3)
    assert (tmp_path / "a").read_bytes() == b"checkpoint bytes"


def test_output_dir_below_a_file_is_refused_with_the_option_named(tmp_path):
    (tmp_path / "file").write_text("keep")
    with pytest.raises(TpvkitError, match=r"--save-predictions .*file is a file, not a folder"):
        check_output_dir(tmp_path / "file" / "sub", "--save-predictions")
    with pytest.raises(TpvkitError, match="is a file, not a folder"):
        check_output_dir(tmp_path / "file")
    assert (tmp_path / "file").read_text() == "keep"
    assert check_output_dir(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # checking creates nothing


def test_output_file_checks(tmp_path):
    (tmp_path / "file").write_text("keep")
    with pytest.raises(TpvkitError, match="is a folder"):
        check_output_file(tmp_path)
    with pytest.raises(TpvkitError, match="is a file, not a folder"):
        check_output_file(tmp_path / "file" / "x.ply")
    assert check_output_file(tmp_path / "file") == tmp_path / "file"
    assert check_output_file(tmp_path / "d" / "x.ply") == tmp_path / "d" / "x.ply"
