"""Writing a file that appears under its name only when complete, and that nobody else can
redirect.

The content goes to a temporary file in the target's folder, created with ``O_CREAT | O_EXCL |
O_NOFOLLOW`` under an unpredictable name (``tempfile.mkstemp``): a symlink or file planted at a
guessable name cannot capture the data, since a name that exists already is never opened, and
a link is never followed. It is fsynced, renamed over the target (a rename replaces a symlink at
the target, it does not write through it) and the folder is fsynced, so a crash leaves the old
file or the new one, never a torn one. The file is private to its owner (mode 0600): exports
hold conversations. Blocking I/O: call from a worker thread in async code.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

__all__ = ["AtomicFile", "write_file_atomically"]


class AtomicFile:
    """A new file for ``path``: write to ``stream``, then ``commit()`` (or ``abort()``)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            fd, name = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.",
                                        suffix=".partial")
        except OSError as exc:  # name the file asked for, not the random temporary name
            raise type(exc)(exc.errno, exc.strerror, str(self.path)) from None
        self.temporary_path = Path(name)
        self.stream: BinaryIO = os.fdopen(fd, "wb")

    def commit(self) -> int:
        """Make the content durable and give it its name; its size in bytes."""
        try:
            self.stream.flush()
            os.fsync(self.stream.fileno())
            size = os.fstat(self.stream.fileno()).st_size
            self.stream.close()
            os.replace(self.temporary_path, self.path)
        except BaseException:
            self.abort()
            raise
        _fsync_folder(self.path.parent)
        return size

    def abort(self) -> None:
        """Drop the temporary file (after an error or a cancellation)."""
        with contextlib.suppress(OSError):  # best effort: an error is already on its way
            self.stream.close()
        self.temporary_path.unlink(missing_ok=True)

    def __enter__(self) -> AtomicFile:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def write_file_atomically(path: str | os.PathLike[str], data: bytes, *,
                          create_folders: bool = False) -> int:
    """Replace ``path`` with ``data`` as ``AtomicFile`` does (creating its missing folders
    first when asked); the number of bytes written."""
    if create_folders:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    with AtomicFile(path) as file:
        file.stream.write(data)
    return len(data)


def _fsync_folder(folder: Path) -> None:
    """Persist the rename; not every platform can open a folder, which then goes unsynced."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
