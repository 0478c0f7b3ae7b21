"""Every change the service makes to its data folder, through one seam: the steps a crash can cut short.

Each call is one step that a power cut either leaves on disk or not: an
append (fsynced before it returns), a new file (likewise), a rename, an
unlink, a folder's fsync (which makes the renames and unlinks before it
durable). The crash-consistency test (``tests/test_crash.py``) puts a
recorder in ``OPS``'s place, then rebuilds the folder as a crash after each
step, or in the middle of one, leaves it (the method of ALICE, Pillai et
al., OSDI 2014).

Ground floor: it imports nothing of the package.
"""

from __future__ import annotations

import gzip
import io
import os
from pathlib import Path

FILE_MODE = 0o640  # readings show when someone is home: the service's group may read them, others not
TMP_SUFFIX = ".tmp"


def private_file(path: str, flags: int) -> int:
    """An ``opener`` for open(): a file it creates gets FILE_MODE whatever the umask allows beyond it."""
    return os.open(path, flags, FILE_MODE)


class FileOps:
    """The real steps, on the real disk."""

    def append(self, path: Path, data: bytes) -> None:
        """Whole or nothing, then fsync: a failed write is cut back to where it began."""
        view = memoryview(data)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
        try:
            size = os.fstat(fd).st_size
            try:
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            except OSError:
                _truncate_quietly(fd, size, path)
                raise
        finally:
            os.close(fd)

    def create(self, path: Path, data: bytes) -> None:
        """A new file (replacing one of that name), written and fsynced."""
        with open(path, "wb", opener=private_file) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    def rename(self, source: Path, target: Path) -> None:
        os.replace(source, target)

    def unlink(self, path: Path) -> None:
        os.unlink(path)

    def sync_dir(self, path: Path) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


OPS = FileOps()  # the seam: a test swaps in a recorder


def _truncate_quietly(fd: int, size: int, path: Path) -> None:
    """Undo a partial append so a retry cannot leave a torn or doubled row."""
    import logging

    try:
        os.ftruncate(fd, size)
    except OSError as exc:
        logging.getLogger(__name__).error("cannot undo a partial write to %s: %s", path, exc)


def append(path: Path, data: bytes) -> None:
    OPS.append(path, data)


def unlink(path: Path, missing_ok: bool = False) -> None:
    try:
        OPS.unlink(path)
    except FileNotFoundError:
        if not missing_ok:
            raise


def rename(source: Path, target: Path) -> None:
    OPS.rename(source, target)


def sync_dir(path: Path) -> None:
    OPS.sync_dir(path)


def gzipped(name: str, data: bytes) -> bytes:
    """``data`` as a .gz named ``name`` inside, byte for byte the same each time (mtime 0)."""
    buffer = io.BytesIO()
    with gzip.GzipFile(filename=name, mode="wb", fileobj=buffer, mtime=0) as gz:
        gz.write(data)
    return buffer.getvalue()


def atomic_write(path: Path, data: bytes, compress: bool) -> None:
    """Write to a temporary name, fsync, rename, fsync the folder: all or nothing."""
    tmp = path.with_name(path.name + TMP_SUFFIX)
    try:
        OPS.create(tmp, gzipped(path.name[:-3], data) if compress else data)
        OPS.rename(tmp, path)
    except BaseException:
        unlink(tmp, missing_ok=True)
        raise
    OPS.sync_dir(path.parent)
