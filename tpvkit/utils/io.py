"""File output: atomic writes that honour the umask, and output paths checked before any work.

A reader (or a crash) never sees half a file, and a command whose output path cannot be written
says so before it computes anything. Every command's output policy lives here too
(check_output_file / check_output_dir with overwrite=False and the command's inputs): an
existing file or non-empty folder is refused without --overwrite, an input is never an output.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from tpvkit.errors import TpvkitError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _temp_beside(path: Path) -> Path:
    """A fresh, empty temporary file in `path`'s folder (same file system: rename is atomic)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(tmp)


def _replace_durably(tmp: Path, path: Path) -> None:
    os.replace(tmp, path)
    with contextlib.suppress(OSError):  # make the rename itself durable where we can
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename.

    The file gets the permissions an ordinary open() would give it (0666 less the umask; mkstemp
    alone would leave 0600). On an exception the temporary file is removed and `path` is left as
    it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = _temp_beside(path)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        _replace_durably(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


_FICLONE = 0x40049409  # Linux ioctl: share the source's blocks copy-on-write (btrfs, XFS, ...)


def _clone_or_copy(src: Path, dst: Path) -> None:
    """Copy `src` to `dst`: a copy-on-write clone where the file system offers one (no space,
    no time), else an ordinary copy (in-kernel on Linux). Either way writing to one file later
    never changes the other, which a hard link would."""
    try:
        import fcntl

        with open(src, "rb") as fin, open(dst, "wb") as fout:
            fcntl.ioctl(fout.fileno(), _FICLONE, fin.fileno())
        return
    except (ImportError, OSError):
        pass
    shutil.copyfile(src, dst)


def copy_atomic(src: str | Path, dst: str | Path) -> Path:
    """Make `dst` an independent copy of `src` (a clone where possible), replaced atomically.

    latest.pth is such a copy of the newest iter_*.pth rather than a hard link: with a link,
    damaging one name in place (a truncating copy onto latest.pth, an editor) damaged the other
    too, so the iter_*.pth the resume error points to was lost as well.
    """
    src, dst = Path(src), Path(dst)
    with atomic_path(dst) as tmp:
        _clone_or_copy(src, tmp)
    return dst


def _first_existing_parent(path: Path) -> Path:
    for parent in path.parents:
        if parent.exists():
            return parent
    return Path(".")


def _check_creatable(path: Path, option: str) -> None:
    """`path` does not exist yet: its nearest existing ancestor must be a writable folder."""
    parent = _first_existing_parent(path)
    if not parent.is_dir():
        raise TpvkitError(
            f"{option} {path}: {parent} is a file, not a folder; choose a path that is not "
            "below a file"
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise TpvkitError(f"{option} {path}: {parent} is not writable; choose another path")


def _same_path(a: Path, b: Path) -> bool:
    """The same file or folder: one inode (links, ../ spellings) or the same resolved path."""
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


Inputs = Iterable[tuple[str, "str | Path | None"]]


def _refuse_inputs(path: Path, option: str, inputs: Inputs) -> None:
    """An output may never replace one of the command's inputs, --overwrite or not."""
    for role, given in inputs:
        if given is not None and _same_path(path, Path(given)):
            raise TpvkitError(
                f"{option} {path} is {role} ({given}): an output may not replace an input; "
                "choose another path"
            )


def check_output_dir(
    path: str | Path,
    option: str = "--out",
    *,
    overwrite: bool = True,
    inputs: Inputs = (),
) -> Path:
    """Refuse, before any work, an output folder that cannot be created or written.

    The commands' output policy (tpvkit/cli): with `overwrite` False a non-empty folder is
    refused (files of the same names would be replaced); a folder that is one of `inputs`
    ((role, path) pairs: ("the input folder", p)) is refused always.
    `option` names the command-line option (or config key) in the message.
    """
    path = Path(path)
    _refuse_inputs(path, option, inputs)
    if path.exists():
        if not path.is_dir():
            raise TpvkitError(f"{option} {path} is a file, not a folder; choose a folder path")
        if not os.access(path, os.W_OK | os.X_OK):
            raise TpvkitError(f"{option} {path} is not writable; choose another folder")
        if not overwrite and any(path.iterdir()):
            raise TpvkitError(
                f"{option} {path} is not empty: choose a new folder, or pass --overwrite to "
                "write into it (files of the same name are replaced)"
            )
        return path
    _check_creatable(path, option)
    return path


def check_output_file(
    path: str | Path,
    option: str = "--out",
    *,
    overwrite: bool = True,
    inputs: Inputs = (),
) -> Path:
    """Refuse, before any work, an output file path that cannot be written.

    The commands' output policy (tpvkit/cli): with `overwrite` False an existing file is
    refused; a path that is one of `inputs` ((role, path) pairs: ("the checkpoint", p)) is
    refused always.
    """
    path = Path(path)
    _refuse_inputs(path, option, inputs)
    if path.is_dir():
        raise TpvkitError(f"{option} {path} is a folder; give a file path")
    if path.exists():
        if not overwrite:
            raise TpvkitError(
                f"{option} {path} exists: choose another path, or pass --overwrite to replace it"
            )
        if not os.access(path.parent, os.W_OK | os.X_OK):
            raise TpvkitError(f"{option} {path}: {path.parent} is not writable")
        return path
    _check_creatable(path, option)
    return path
