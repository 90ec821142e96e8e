"""The file store's layout on disk: which path holds a key, and what one file holds.

* A key is cut into pieces: after each ``:``, and after 30 characters without one (``pieces``).
  Every piece but the last is a folder, the last is the file: ``message:s1:m5`` is
  ``<message:>.s/<s1:>.s/<m5>.json``. So the keys of one session sit in one folder, and a scan
  of ``message:s1:`` opens the two folders by name and lists the third: it never reads the
  names of other sessions' keys (``list_keys``). Pieces are prefix-free among folders (a
  folder's piece ends at its only ``:``, or is 30 characters without one), so sorting the
  entries of a folder by piece, a file before a folder of the same piece, and descending into
  folders in place, yields the keys in key order.
* A name is the lowercase hex of its piece's UTF-8 bytes: one-to-one (no case folding or
  Unicode normalisation can merge two keys), made of ``[0-9a-f]`` only (no ``..``, ``/``,
  ``CON`` or other reserved name can arise), at most 240 characters plus the suffix (``.s`` for
  a folder, ``.json`` for a file, so a file never shares a name with a folder).
* Files are written under a temporary name in ``.tmp/`` of the namespace folder, then renamed
  into their folder: opening the store clears ``.tmp/`` of dead writers' files.
* Folders written by releases before this layout (the whole key's hex as one name, cut into
  240-character ``.d`` folders) are moved into it when the store is opened
  (``kvsessions.kv.file_upgrade``).
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
from collections.abc import Callable

from kvsessions.errors import StoreError
from kvsessions.kv.values import prefix_upper_bound

__all__ = ["key_to_parts", "list_keys", "list_names", "pieces", "read_file"]

PART = 240  # hex characters in one path component of the previous layout
PIECE_CHARS = 30  # at most 120 UTF-8 bytes: 240 hex characters
FILE_SUFFIX, DIR_SUFFIX, PIECE_SUFFIX = ".json", ".d", ".s"
TEMP_PREFIX = ".tmp-"
TEMP_FOLDER = ".tmp"
LOCK_NAME = ".lock"
MAGIC = b"kvs1 "
FILE_NAME = re.compile(r"(?:[0-9a-f]{2}){0,120}\.json")
PIECE_NAME = re.compile(r"(?:[0-9a-f]{2}){1,120}\.s")
#: A folder of the previous layout (the first 240 hex characters of a long key).
DIR_NAME = re.compile(r"[0-9a-f]{240}\.d")
TEMP_NAME = re.compile(r"\.tmp-(\d+)-[0-9a-f]+")
NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
DIRECTORY = getattr(os, "O_DIRECTORY", 0)
CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_READ_FLAGS = (os.O_RDONLY | NOFOLLOW | CLOEXEC | getattr(os, "O_NONBLOCK", 0)
               | getattr(os, "O_NOCTTY", 0))

#: (value, expiry as Unix time or None) of one file.
Found = tuple[bytes, float | None]


def pieces(key: str) -> list[str]:
    """``key`` cut after each ``:`` and after ``PIECE_CHARS`` characters without one."""
    found: list[str] = []
    start = 0
    while True:
        colon = key.find(":", start, start + PIECE_CHARS)
        if colon >= 0:
            found.append(key[start:colon + 1])
            start = colon + 1
        elif len(key) - start <= PIECE_CHARS:
            found.append(key[start:])
            return found
        else:
            found.append(key[start:start + PIECE_CHARS])
            start += PIECE_CHARS


def key_to_parts(key: str) -> tuple[list[str], str]:
    """The folder names and the file name that hold ``key`` (relative to the namespace)."""
    cut = pieces(key)
    return ([p.encode("utf-8").hex() + PIECE_SUFFIX for p in cut[:-1]],
            cut[-1].encode("utf-8").hex() + FILE_SUFFIX)


def legacy_key_to_parts(key: str) -> tuple[list[str], str]:
    """Where the previous layout kept ``key``: its hex cut into 240-character parts."""
    hexed = key.encode("utf-8").hex()
    parts = [hexed[i:i + PART] for i in range(0, len(hexed), PART)]
    return [p + DIR_SUFFIX for p in parts[:-1]], parts[-1] + FILE_SUFFIX


def is_current_file(key: str) -> bool:
    """Whether a file named for ``key`` in the namespace folder is of this layout (a key of
    one piece), not one of the previous layout to move."""
    return len(pieces(key)) == 1


def decode_piece(name: str, suffix: str) -> str | None:
    return decode_key(name[:-len(suffix)])


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


def list_keys(root_fd: int, lower: str, lower_inclusive: bool, upper: str | None,
              open_dir: Callable[[int, str], int]) -> list[str]:
    """The keys in ``[lower, upper)`` (``lower`` excluded unless ``lower_inclusive``), sorted,
    from the names alone (no file is read). Where every key of the range lies under one
    folder whose piece ends in ``:``, that folder is opened by name instead of listing its
    parent: a scan of ``message:s1:`` lists only that session's folder. ``open_dir(fd, name)``
    opens a sub-folder (raising on a symlink) or raises ``FileNotFoundError``."""
    keys: list[str] = []

    def in_range(key: str) -> bool:
        if key < lower or (key == lower and not lower_inclusive):
            return False
        return upper is None or key < upper

    def walk(dir_fd: int, path: str) -> None:
        rest = lower[len(path):] if lower.startswith(path) else None
        if rest is not None and upper is not None:
            first = rest.split(":", 1)[0] + ":" if ":" in rest[:PIECE_CHARS] else None
            bound = None if first is None else prefix_upper_bound(path + first)
            if first is not None and bound is not None and upper <= bound:
                descend(dir_fd, path, first)  # the whole range is in this one folder
                return
        entries: list[tuple[str, bool, str]] = []
        for name, is_dir, is_link in list_names(dir_fd):
            if (is_dir or is_link) and PIECE_NAME.fullmatch(name):  # open_dir refuses a link
                piece = decode_piece(name, PIECE_SUFFIX)
                if piece is None:
                    continue
                start = path + piece
                end = prefix_upper_bound(start)
                if (end is not None and end <= lower) or (upper is not None and start >= upper):
                    continue
                entries.append((piece, True, name))
            elif FILE_NAME.fullmatch(name):  # reading refuses a link, a folder, a FIFO
                piece = decode_piece(name, FILE_SUFFIX)
                if piece is not None and in_range(path + piece):
                    entries.append((piece, False, name))
        entries.sort(key=lambda entry: (entry[0], entry[1]))
        for piece, is_dir, _ in entries:
            if is_dir:
                descend(dir_fd, path, piece)
            else:
                keys.append(path + piece)

    def descend(dir_fd: int, path: str, piece: str) -> None:
        try:
            child = open_dir(dir_fd, piece.encode("utf-8").hex() + PIECE_SUFFIX)
        except FileNotFoundError:
            return
        try:
            walk(child, path + piece)
        finally:
            os.close(child)

    walk(root_fd, "")
    return keys
