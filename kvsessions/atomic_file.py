"""Writing a file that appears under its name only when complete, and that nobody else can
redirect.

The content goes to a temporary file in the target's folder, created with ``O_CREAT | O_EXCL |
O_NOFOLLOW`` under an unpredictable name (``tempfile.mkstemp``): a symlink or file planted at a
guessable name cannot capture the data, since a name that exists already is never opened, and
a link is never followed. It is fsynced, renamed over the target and the folder is fsynced, so a
crash leaves the old file or the new one, never a torn one. The target must be new or a regular
file: a symlink, named pipe, device (``/dev/full``) or folder there is refused with
``ConfigError`` before anything is written, since renaming over it would silently replace
something that was never a file of ours. The file is private to its owner (mode 0600): exports
hold conversations. Blocking I/O: call from a worker thread in async code.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from kvsessions.errors import ConfigError

__all__ = ["AtomicFile", "check_destination", "named_error", "write_file_atomically"]

#: What a destination that is not a regular file is, by its file type.
_FILE_TYPES = (
    (stat.S_ISLNK, "a symbolic link"),
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a named pipe"),
    (stat.S_ISCHR, "a device"),
    (stat.S_ISBLK, "a device"),
    (stat.S_ISSOCK, "a socket"),
)


def named_error(exc: OSError, path: str | os.PathLike[str]) -> OSError:
    """``exc`` naming ``path`` (the file the user asked for), not a temporary file."""
    return type(exc)(exc.errno, exc.strerror, str(path))


def check_destination(path: str | os.PathLike[str]) -> None:
    """Refuse a ``path`` that exists and is not a regular file (``ConfigError``)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise named_error(exc, path) from None
    if stat.S_ISREG(mode):
        return
    what = next((name for test, name in _FILE_TYPES if test(mode)), "not a regular file")
    raise ConfigError(f"{os.fspath(path)} is {what}: write to a new or a regular file instead "
                      "(nothing was written)")


class AtomicFile:
    """A new file for ``path``: write to ``stream``, then ``commit()`` (or ``abort()``)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        check_destination(self.path)
        try:
            fd, name = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.",
                                        suffix=".partial")
        except OSError as exc:  # name the file asked for, not the random temporary name
            raise named_error(exc, self.path) from None
        self.temporary_path = Path(name)
        self.stream: BinaryIO = os.fdopen(fd, "wb")

    def commit(self) -> int:
        """Make the content durable and give it its name; its size in bytes."""
        try:
            self.stream.flush()
            os.fsync(self.stream.fileno())
            size = os.fstat(self.stream.fileno()).st_size
            self.stream.close()
            check_destination(self.path)  # again: something may have appeared there meanwhile
            os.replace(self.temporary_path, self.path)
        except OSError as exc:
            self.abort()
            raise named_error(exc, self.path) from None
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
