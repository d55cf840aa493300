"""Writing files: the one place that knows which OSErrors mean a full disk."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def disk_full(error: BaseException) -> bool:
    """Whether ``error`` is a write that failed on a full disk or an exhausted quota."""
    return isinstance(error, OSError) and error.errno in DISK_FULL


def full_disk_name(error: OSError) -> str:
    """What ran out, in words: the device's space or the user's quota."""
    return "no space left on the device" if error.errno == errno.ENOSPC else "disk quota exceeded"


@contextlib.contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Names ``path`` in a full-disk OSError raised inside (``write()`` raises ENOSPC without a file
    name, a temporary file's name means nothing to the user), so the error line says which file it
    was."""
    try:
        yield
    except OSError as error:
        if not disk_full(error):
            raise
        raise OSError(error.errno, error.strerror, os.fspath(path)) from error


@contextlib.contextmanager
def replacing(path: str | os.PathLike, tmp: str | os.PathLike | None = None) -> Iterator[Path]:
    """A temporary file (``tmp``, default ``.<name>.tmp-<pid>`` beside ``path``) to write the new
    ``path`` into: renamed onto ``path`` when the block ends, removed when it fails, so a full disk
    or Ctrl-C leaves the previous file and no partial one; a full disk inside names ``path``."""
    path = Path(path)
    tmp = Path(tmp) if tmp is not None else path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with writing(path):
            yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Replaces ``path`` with ``text`` whole (``replacing``)."""
    with replacing(path) as tmp:
        tmp.write_text(text)


def disk_error(error: Exception, path: Path) -> BaseException:
    """torch's "file write failed" as the OSError it is (ENOSPC) when the disk holding ``path`` is
    full, so that it is reported as a full disk; else ``error`` itself."""
    try:
        full = shutil.disk_usage(path.parent).free < 1 << 20  # the folder of the file exists by then
    except OSError:
        full = False
    if full or "No space left" in str(error) or "StorageFull" in str(error):
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    return error


def nearest_existing(path: Path) -> Path:
    """``path`` itself when it exists, else the nearest folder above it that does (where a
    ``mkdir(parents=True)`` of ``path`` would start writing)."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def file_in_the_way(folder: Path) -> Path | None:
    """The file that stops ``folder`` from being created (``folder`` itself or a parent that is a
    file, not a folder), or None."""
    existing = nearest_existing(Path(folder))
    return None if existing.is_dir() else existing


def unwritable(folder: str | os.PathLike) -> str | None:
    """Why ``folder`` cannot be created or written in ("<path> is a file, not a folder", "<path> is
    not writable", naming ``folder`` or the nearest existing folder above it), or None."""
    existing = nearest_existing(Path(folder))
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable"
    return None
