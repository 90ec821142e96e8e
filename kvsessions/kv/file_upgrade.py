"""Folders written by releases before the current file layout, moved into it when a store is
opened: there, a key's file was named by the hex of the whole key in the namespace folder, and
a key longer than 120 bytes was cut into 240-character ``.d`` folders (``file_layout``).

The old names cannot be mistaken for current ones: a current file in the namespace folder holds
a key of one piece (no ``:``, at most 30 characters), and current folders end in ``.s``. Each
file is moved by one rename into its current folder, so a crash in the middle leaves every
document either at its old place or at its new one, and the next open moves the rest. The
move runs under the namespace lock; a process of an earlier release must not write to the
folder once a current release has opened it (its files would land at the old places).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator

from kvsessions.kv.file_layout import (
    DIR_NAME,
    DIR_SUFFIX,
    FILE_NAME,
    FILE_SUFFIX,
    TEMP_NAME,
    decode_key,
    is_current_file,
    list_names,
)

__all__ = ["LegacyFile", "legacy_files"]

#: (descriptor of its folder, its name there, the key it holds)
LegacyFile = tuple[int, str, str]


def legacy_files(root_fd: int, open_dir: Callable[[int, str], int],
                 is_dead_temp: Callable[[str], bool]) -> Iterator[LegacyFile]:
    """Every file of the previous layout under the namespace folder ``root_fd``, for the
    caller to move before it asks for the next (a descriptor yielded is closed after that).
    Dead writers' temporary files met in old folders are removed, and an old folder is
    removed once its files are gone (one that still holds something stays)."""
    yield from _walk(root_fd, "", open_dir, is_dead_temp)


def _walk(dir_fd: int, hexed: str, open_dir: Callable[[int, str], int],
          is_dead_temp: Callable[[str], bool]) -> Iterator[LegacyFile]:
    for name, is_dir, is_link in list_names(dir_fd):
        if is_dir and not is_link and DIR_NAME.fullmatch(name):
            sub = open_dir(dir_fd, name)
            try:
                yield from _walk(sub, hexed + name[:-len(DIR_SUFFIX)], open_dir,
                                 is_dead_temp)
            finally:
                os.close(sub)
            with contextlib.suppress(OSError):  # not empty: a live writer's temp file
                os.rmdir(name, dir_fd=dir_fd)
        elif not is_dir and FILE_NAME.fullmatch(name) and len(name) > len(FILE_SUFFIX):
            key = decode_key(hexed + name[:-len(FILE_SUFFIX)])
            if key is not None and (hexed or not is_current_file(key)):
                yield dir_fd, name, key
        elif hexed and TEMP_NAME.fullmatch(name) and is_dead_temp(name):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=dir_fd)
