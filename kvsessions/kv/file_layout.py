"""The file store's layout on disk: which path holds a key, and what one file holds.

* A key's file name is the lowercase hex of its UTF-8 bytes: one-to-one (no case folding or
  Unicode normalisation can merge two keys), made of ``[0-9a-f]`` only (no ``..``, ``/``,
  ``CON`` or other reserved name can arise), and sorted like the keys (hex preserves byte
  order). Hex longer than 240 characters is cut into 240-character folder names ending in
  ``.d`` and a last part ending in ``.json``, so no name exceeds the file-system limit and a
  file never shares a name with a folder.
* A file starts with one header line, ``kvs1 <expiry or ->``, then the JSON value.
* A key's file is opened relative to its folder's descriptor with ``O_NOFOLLOW`` and
  ``O_NONBLOCK`` and checked with ``fstat`` before it is read: a symlink, a FIFO, a socket, a
  device or a folder planted at a key's name is a ``StoreError`` naming the key, never a read
  through a link and never a hang (opening a FIFO without ``O_NONBLOCK`` waits for a writer).
"""

from __future__ import annotations

import errno
import os
import re
import stat

from kvsessions.errors import StoreError

__all__ = ["key_to_parts", "list_names", "read_file"]

PART = 240  # hex characters in one path component
FILE_SUFFIX, DIR_SUFFIX = ".json", ".d"
TEMP_PREFIX = ".tmp-"
LOCK_NAME = ".lock"
MAGIC = b"kvs1 "
FILE_NAME = re.compile(r"(?:[0-9a-f]{2}){1,120}\.json")
DIR_NAME = re.compile(r"[0-9a-f]{240}\.d")
TEMP_NAME = re.compile(r"\.tmp-(\d+)-[0-9a-f]+")
NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
DIRECTORY = getattr(os, "O_DIRECTORY", 0)
CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_READ_FLAGS = (os.O_RDONLY | NOFOLLOW | CLOEXEC | getattr(os, "O_NONBLOCK", 0)
               | getattr(os, "O_NOCTTY", 0))

#: (value, expiry as Unix time or None) of one file.
Found = tuple[bytes, float | None]


def key_to_parts(key: str) -> tuple[list[str], str]:
    """The folder names and the file name that hold ``key`` (relative to the namespace)."""
    hexed = key.encode("utf-8").hex()
    parts = [hexed[i:i + PART] for i in range(0, len(hexed), PART)]
    return [p + DIR_SUFFIX for p in parts[:-1]], parts[-1] + FILE_SUFFIX


def decode_key(hexed: str) -> str | None:
    try:
        return bytes.fromhex(hexed).decode("utf-8")
    except ValueError:
        return None


def list_names(dir_fd: int) -> list[tuple[str, bool, bool]]:
    """``(name, is a folder, is a symlink)`` of every entry of the folder ``dir_fd``, read
    through a descriptor of its own: a folder's read position belongs to the open file
    description, which a ``dup`` (what ``scandir(fd)`` reads through) shares, so two threads
    listing the same descriptor at once would each skip the names the other read."""
    own = os.open(".", os.O_RDONLY | DIRECTORY | CLOEXEC, dir_fd=dir_fd)
    try:
        with os.scandir(own) as entries:
            return [(e.name, e.is_dir(follow_symlinks=False), e.is_symlink()) for e in entries]
    finally:
        os.close(own)


def encode_header(deadline: float | None) -> bytes:
    return MAGIC + (b"-" if deadline is None else repr(deadline).encode()) + b"\n"


def read_file(dir_fd: int, name: str, key: str, owner: str, *,
              damaged_ok: bool = False) -> Found | None:
    """(value, expiry) of ``key``'s file ``name`` in the folder ``dir_fd``, or None when there
    is none. ``owner`` (the store's repr) goes into error messages. ``damaged_ok``: a regular
    file whose content is not ours reads as ``(b"", None)`` instead of raising (for a delete,
    which repairs it); what is not a regular file raises all the same."""
    try:
        fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise StoreError(f"{owner}: the file of key {key!r} is a symlink; refusing "
                             "to follow it") from None
        if exc.errno == errno.ENXIO:  # a socket
            raise _not_regular(owner, key, "a socket") from None
        raise
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise _not_regular(owner, key, _kind(status.st_mode))
        # Files are replaced, never changed in place: the size is final.
        size = status.st_size
        data = os.read(fd, size + 1)
        while len(data) < size:
            more = os.read(fd, size - len(data) + 1)
            if not more:
                break
            data += more
    finally:
        os.close(fd)
    newline = data.find(b"\n", 0, 64)
    problem = None
    if not data.startswith(MAGIC) or newline < 0:
        problem = "is not a kvsessions file"
    else:
        stamp = data[len(MAGIC):newline]
        try:
            return data[newline + 1:], None if stamp == b"-" else float(stamp)
        except ValueError:
            problem = "has a bad header"
    if damaged_ok:
        return b"", None
    raise StoreError(f"{owner}: the file of key {key!r} {problem}")


def _not_regular(owner: str, key: str, kind: str) -> StoreError:
    return StoreError(f"{owner}: the file of key {key!r} is {kind}, not a regular file "
                      "(placed there by something other than kvsessions); remove it")


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a file"
