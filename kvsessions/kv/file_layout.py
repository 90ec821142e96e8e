"""The file store's layout on disk: which path holds a key, and what one file holds.

* A key's UTF-8 bytes are cut into pieces: after each ``:``, and after 120 bytes without one
  (``pieces``; such a cut may fall inside a character: pieces are bytes, keys are whole).
  Every piece but the last is a folder, the last is the file: ``message:s1:m5`` is
  ``<message:>.s/<s1:>.s/<m5>.json``. So the keys of one session sit in one folder, and a scan
  of ``message:s1:`` opens the two folders by name and lists the third: it never reads the
  names of other sessions' keys (``list_keys``). A delete removes the folders it leaves
  empty (``FileStore._remove_empty_folders``), so deleted sessions leave no folder to list;
  writers open a key's folder under the namespace lock, as deletes remove them. Pieces are
  prefix-free among folders (a folder's piece ends at its only ``:``, or is 120 bytes without
  one), so sorting the entries of a folder by piece, a file before a folder of the same piece,
  and descending into folders in place, yields the keys in byte order, which is key order.
* A name is the lowercase hex of its piece's UTF-8 bytes: one-to-one (no case folding or
  Unicode normalisation can merge two keys), made of ``[0-9a-f]`` only (no ``..``, ``/``,
  ``CON`` or other reserved name can arise), at most 240 characters plus the suffix (``.s`` for
  a folder, ``.json`` for a file, so a file never shares a name with a folder).
* Files are written under a temporary name in ``.tmp/`` of the namespace folder, then renamed
  into their folder: opening the store clears ``.tmp/`` of dead writers' files.
* A batch of several keys (``put_many``) is renamed into place under a journal: a file in
  ``.journal/`` naming each temp file and its key, there only while the renames run (see
  ``FileStore._put_many_sync``).
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

__all__ = ["key_to_parts", "list_keys", "list_names", "pieces", "read_file"]

PART = 240  # hex characters in one path component of the previous layout
PIECE_BYTES = 120  # 240 hex characters in a name
FILE_SUFFIX, DIR_SUFFIX, PIECE_SUFFIX = ".json", ".d", ".s"
TEMP_PREFIX = ".tmp-"
TEMP_FOLDER = ".tmp"
JOURNAL_FOLDER = ".journal"
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


def pieces(key: str | bytes) -> list[bytes]:
    """``key``'s UTF-8 bytes cut after each ``:`` and after ``PIECE_BYTES`` bytes without one
    (every piece but the last is a folder)."""
    data = key.encode("utf-8") if isinstance(key, str) else key
    found: list[bytes] = []
    start = 0
    while True:
        colon = data.find(b":", start, start + PIECE_BYTES)
        if colon >= 0:
            found.append(data[start:colon + 1])
            start = colon + 1
        elif len(data) - start <= PIECE_BYTES:
            found.append(data[start:])
            return found
        else:
            found.append(data[start:start + PIECE_BYTES])
            start += PIECE_BYTES


def key_to_parts(key: str) -> tuple[list[str], str]:
    """The folder names and the file name that hold ``key`` (relative to the namespace)."""
    cut = pieces(key)
    return [p.hex() + PIECE_SUFFIX for p in cut[:-1]], cut[-1].hex() + FILE_SUFFIX


def legacy_key_to_parts(key: str) -> tuple[list[str], str]:
    """Where the previous layout kept ``key``: its hex cut into 240-character parts."""
    hexed = key.encode("utf-8").hex()
    parts = [hexed[i:i + PART] for i in range(0, len(hexed), PART)]
    return [p + DIR_SUFFIX for p in parts[:-1]], parts[-1] + FILE_SUFFIX


def is_current_file(key: str) -> bool:
    """Whether a file named for ``key`` in the namespace folder is of this layout (a key of
    one piece), not one of the previous layout to move."""
    return len(pieces(key)) == 1


def _bytes_after(prefix: bytes) -> bytes:
    """The smallest bytes above every bytes starting with ``prefix`` (UTF-8 has no 0xFF, so
    a piece's last byte can always be raised)."""
    return prefix[:-1] + bytes([prefix[-1] + 1])


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
    low = lower.encode("utf-8")
    high = None if upper is None else upper.encode("utf-8")
    keys: list[str] = []

    def in_range(key: bytes) -> bool:
        if key < low or (key == low and not lower_inclusive):
            return False
        return high is None or key < high

    def walk(dir_fd: int, path: bytes) -> None:
        if high is not None and low.startswith(path):
            colon = low.find(b":", len(path), len(path) + PIECE_BYTES)
            if colon >= 0 and high <= _bytes_after(low[:colon + 1]):
                descend(dir_fd, path, low[len(path):colon + 1])  # the whole range is there
                return
        # Every key below ``path`` is in range (a prefix scan's own folder): no checks.
        inside = bool(path) and path > low and (high is None or _bytes_after(path) <= high)
        entries: list[tuple[str, bool]] = []  # (piece as hex, is a folder): hex sorts as bytes
        for name, is_dir, is_link in list_names(dir_fd):
            if name.endswith(FILE_SUFFIX):
                if not FILE_NAME.fullmatch(name):  # reading refuses a link, a folder, a FIFO
                    continue
                hexed = name[:-len(FILE_SUFFIX)]
                if inside or in_range(path + bytes.fromhex(hexed)):
                    entries.append((hexed, False))
            elif (is_dir or is_link) and PIECE_NAME.fullmatch(name):  # open_dir refuses links
                hexed = name[:-len(PIECE_SUFFIX)]
                if not inside:
                    start = path + bytes.fromhex(hexed)
                    if _bytes_after(start) <= low or (high is not None and start >= high):
                        continue
                entries.append((hexed, True))
        entries.sort()
        for hexed, is_dir in entries:
            if is_dir:
                descend(dir_fd, path, bytes.fromhex(hexed))
                continue
            try:
                keys.append((path + bytes.fromhex(hexed)).decode("utf-8"))
            except UnicodeDecodeError:
                continue  # not a name of ours

    def descend(dir_fd: int, path: bytes, piece: bytes) -> None:
        try:
            child = open_dir(dir_fd, piece.hex() + PIECE_SUFFIX)
        except FileNotFoundError:
            return
        try:
            walk(child, path + piece)
        finally:
            os.close(child)

    walk(root_fd, b"")
    return keys
