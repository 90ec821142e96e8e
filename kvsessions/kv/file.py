"""A folder of files, one a key: ``file:///abs/dir?namespace=NAME`` keeps NAME's keys in
``/abs/dir/NAME/``. Which file holds a key, and what a file holds: see ``file_layout``.

Why it is built this way:

* Writes go to ``.tmp/.tmp-<pid>-<random>`` in the namespace folder, are fsynced, renamed over
  the final name in the key's folder and that folder is fsynced: a reader sees the old file or
  the new one. A failed write raises. Opening removes temp files whose writing process is gone
  (one folder to look in, whatever the number of keys).
* Scans read the names of the keys in their range only (``file_layout.list_keys``): one
  session's messages are one folder. Opening moves a folder of the previous layout into the
  current one (``file_upgrade``).
* Renames, deletions and the removal of expired files in a namespace are serialised by an
  ``flock`` on ``.lock`` (and a thread lock within the process): that makes ``put_if_absent``
  and ``compare_and_set`` atomic across processes even when they replace an expired file, and
  it means removing an expired file can never remove a fresh one written at the same moment.
  Writing and fsyncing the data happens outside the lock.
* Readers hold the same ``flock`` shared (through a descriptor of their own, counted across
  the process's threads), so a read sees none or all of the renames of one locked step.
* ``put_many`` of several keys is all or nothing, also across a crash: the temp files are
  written and fsynced first; then, under the lock, a journal naming every temp file and its
  key is renamed into ``.journal/`` and fsynced, the temp files are renamed into place, their
  folders fsynced and the journal removed. A writer that dies in between leaves the journal
  (and a mark: the lock file one byte long); whoever takes the lock next, a writer or a reader
  that sees the mark, first renames what the journal still names (roll forward), and opening
  the store does it always. The cost: one journal file, two fsyncs more per batch, and the
  folders' fsyncs inside the lock.
* The mark is a counter in the lock file's first 8 bytes, mapped into memory: odd while a batch
  is between its journal and its last rename (or its writer died there), bumped to odd and back
  to even by each batch. A single ``get`` reads it before and after reading its file and takes
  the shared lock only when it was odd or changed (a seqlock): no system call for the lock.
* Nothing below the namespace folder is followed through a symlink: files and folders are
  opened relative to a folder descriptor with ``O_NOFOLLOW``; a symlink where a key's file or
  folder should be raises ``StoreError``.
* Expired files are invisible at once and deleted when met. Anything that is not a regular
  file where a key's file should be (a FIFO, a socket, a folder) is a ``StoreError`` naming
  the key, never a hang (see ``file_layout``).

Reads of single keys run on the event loop (a page-cache read costs microseconds, less than a
thread hop); writes, batches and scan pages run on worker threads. POSIX only.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import mmap
import os
import secrets
import stat
import struct
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import orjson

from kvsessions.errors import ConfigError, StoreError
from kvsessions.kv.base import (
    KeyRange,
    KVStore,
    expires_at,
    outlive_cancellation,
)
from kvsessions.kv.file_layout import (
    CLOEXEC,
    DIRECTORY,
    JOURNAL_FOLDER,
    LOCK_NAME,
    NOFOLLOW,
    TEMP_FOLDER,
    TEMP_NAME,
    TEMP_PREFIX,
    Found,
    encode_header,
    key_to_parts,
    list_keys,
    list_names,
    read_file,
)
from kvsessions.kv.file_upgrade import legacy_files
from kvsessions.kv.options import SHARED, Flag, batch_size_option, not_allowed, read_options
from kvsessions.urls import StoreURL

__all__ = ["FileStore", "key_to_parts"]

_T = TypeVar("_T")
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)


def _dead_temp(name: str) -> bool:
    """Whether ``name`` is a temp file of a writer process that no longer runs."""
    match = TEMP_NAME.fullmatch(name)
    return match is not None and not _pid_alive(int(match.group(1)))


#: The batch counter at the start of the lock file (see ``FileStore._journal_marked``).
_MARK = struct.Struct("<Q")


class _Busy(Exception):
    """The namespace lock is held and the caller asked not to wait for it."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class FileStore(KVStore):
    """Each namespace is a sub-folder of ``root``; each key is one file in it."""

    declared_options = (*SHARED, batch_size_option(200), Flag("fsync", True))

    def __init__(self, root: str | Path, *, namespace: str | None = None,
                 fsync: bool | None = None, durability: str | None = None,
                 batch_size: int | None = None) -> None:
        settings = read_options(self.declared_options, {
            "namespace": namespace, "fsync": fsync, "durability": durability,
            "batch_size": batch_size})
        super().__init__(namespace=settings["namespace"])
        if os.name != "posix":  # pragma: no cover
            raise ConfigError("the file store needs a POSIX system (O_NOFOLLOW, flock)")
        # Both profiles fsync every write; strict only refuses to be combined with fsync off.
        if settings["durability"] == "strict" and not settings["fsync"]:
            raise not_allowed("fsync", False, "true with durability=strict (every write "
                              "fsynced before it returns), or durability=normal")
        self.durability = settings["durability"]
        self.scan_batch_size = settings["batch_size"]
        self.root = Path(root).expanduser().absolute()
        self.fsync = settings["fsync"]
        self._dir_fd = -1
        self._lock_fd = -1
        self._tmp_fd = -1
        self._journal_fd = -1
        self._shared_fd = -1  # readers' descriptor of the lock file (a lock of its own)
        self._thread_lock = threading.Lock()
        self._readers = 0  # threads of this process reading under the shared lock
        self._readers_lock = threading.Lock()
        self._mark: mmap.mmap | None = None  # the batch counter (see _journal_marked)

    @classmethod
    def from_url(cls, url: StoreURL, **given: Any) -> FileStore:
        if url.host or url.port:
            raise ConfigError(
                f"{url.redacted}: a file URL has no host; write file:///absolute/folder")
        if not url.path.startswith("/"):
            raise ConfigError(f"{url.redacted}: expected file:///absolute/folder")
        return cls(url.path, **read_options(cls.declared_options, given, url))

    def __repr__(self) -> str:
        return f"FileStore(root={str(self.root)!r}, namespace={self.namespace!r})"

    @property
    def folder(self) -> Path:
        return self.root / self.namespace

    # ------------------------------------------------------------------ lifecycle

    async def _open(self) -> None:
        await self._run(self._open_sync)

    def _open_sync(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        root_fd = os.open(self.root, os.O_RDONLY | DIRECTORY | CLOEXEC)
        try:
            with contextlib.suppress(FileExistsError):
                os.mkdir(self.namespace, 0o700, dir_fd=root_fd)
            try:
                self._dir_fd = os.open(self.namespace, os.O_RDONLY | DIRECTORY | NOFOLLOW
                                       | CLOEXEC, dir_fd=root_fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise StoreError(f"{self!r}: {self.folder} is not a plain folder "
                                     "(a symlink or a file); refusing to use it") from None
                raise
        finally:
            os.close(root_fd)
        self._lock_fd = os.open(LOCK_NAME, os.O_RDWR | os.O_CREAT | NOFOLLOW | CLOEXEC,
                                0o600, dir_fd=self._dir_fd)
        self._shared_fd = os.open(LOCK_NAME, os.O_RDONLY | NOFOLLOW | CLOEXEC,
                                  dir_fd=self._dir_fd)
        self._tmp_fd = self._open_dir(self._dir_fd, TEMP_FOLDER, create=True)
        self._journal_fd = self._open_dir(self._dir_fd, JOURNAL_FOLDER, create=True)
        with self._thread_lock:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                if os.fstat(self._lock_fd).st_size < _MARK.size:
                    os.ftruncate(self._lock_fd, _MARK.size)  # a lock file of a release before
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        self._mark = mmap.mmap(self._lock_fd, _MARK.size)
        with self._locked():
            # Journals first: a dead writer's temp files that a journal names are its batch.
            self._replay_journals()
            self._remove_dead_temp_files(self._tmp_fd)
            self._remove_dead_temp_files(self._dir_fd)  # where earlier releases wrote them
        self._upgrade_layout()

    async def _close(self) -> None:
        if self._mark is not None:
            self._mark.close()
            self._mark = None
        for fd in (self._tmp_fd, self._journal_fd, self._shared_fd, self._lock_fd,
                   self._dir_fd):
            if fd >= 0:
                os.close(fd)
        self._dir_fd = self._lock_fd = self._tmp_fd = self._journal_fd = self._shared_fd = -1

    def _remove_dead_temp_files(self, dir_fd: int) -> None:
        """Temp files of writers that died mid-write; a live writer's are left alone."""
        for name, is_dir, _ in list_names(dir_fd):
            if not is_dir and _dead_temp(name):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=dir_fd)

    def _upgrade_layout(self) -> None:
        """Move files of the previous layout to their current place (see ``file_upgrade``),
        under the namespace lock, each by one rename; a file already at the current place
        (written since) wins over the old one."""
        moved: set[int] = set()
        with self._locked():
            for folder_fd, name, key in legacy_files(self._dir_fd, self._open_dir,
                                                     _dead_temp):
                with self._key_dir(key, create=True) as where:
                    assert where is not None
                    target_fd, target = where
                    try:
                        os.stat(target, dir_fd=target_fd, follow_symlinks=False)
                    except FileNotFoundError:
                        os.replace(name, target, src_dir_fd=folder_fd, dst_dir_fd=target_fd)
                        self._sync_dir(target_fd)
                    else:
                        os.unlink(name, dir_fd=folder_fd)
                    moved.add(folder_fd)
            if moved:
                self._sync_dir(self._dir_fd)

    @staticmethod
    async def _run(function: Callable[..., _T], *args: Any) -> _T:
        """``function`` on a worker thread. A thread cannot be stopped, so a cancelled call
        waits for it (see ``outlive_cancellation``)."""
        loop = asyncio.get_running_loop()
        return await outlive_cancellation(loop.run_in_executor(None, function, *args))

    # ------------------------------------------------------------------ paths

    def _open_dir(self, parent_fd: int, name: str, *, create: bool = False) -> int:
        """Open the sub-folder ``name``; with ``create``, make it first if needed and fsync
        the parent, so that a file renamed into a new folder cannot lose that folder in a
        power cut."""
        if create:
            try:
                os.mkdir(name, 0o700, dir_fd=parent_fd)
            except FileExistsError:
                pass
            else:
                self._sync_dir(parent_fd)
        try:
            return os.open(name, os.O_RDONLY | DIRECTORY | NOFOLLOW | CLOEXEC | _NONBLOCK,
                           dir_fd=parent_fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise StoreError(f"{self!r}: {name[:20]}... is a symlink or not a folder; "
                                 "refusing to follow it") from None
            raise

    @contextlib.contextmanager
    def _key_dir(self, key: str, *, create: bool = False) -> Iterator[tuple[int, str] | None]:
        """The descriptor of the folder holding ``key``'s file and the file's name (None when
        the folder does not exist and ``create`` is false)."""
        dirs, name = key_to_parts(key)
        fd, owned, missing = self._dir_fd, False, False
        try:
            for part in dirs:
                try:
                    child = self._open_dir(fd, part, create=create)
                except FileNotFoundError:
                    if create:
                        raise
                    missing = True
                    break
                if owned:
                    os.close(fd)
                fd, owned = child, True
            yield None if missing else (fd, name)
        finally:
            if owned:
                os.close(fd)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """The namespace lock, exclusive; a batch a dead writer left half renamed is
        finished first, so nothing is ever written over it."""
        with self._thread_lock:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                if self._journal_marked():
                    self._replay_journals()
                yield
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def _reading(self, *, wait: bool = True) -> Iterator[None]:
        """The namespace lock, shared: no locked step (a batch's renames) is half done while
        it is held. Without ``wait``, ``_Busy`` instead of waiting for it."""
        while True:
            self._share(wait)
            if not self._journal_marked():
                break
            self._unshare()
            if not wait:
                raise _Busy
            with self._locked():  # finishes the dead writer's batch
                pass
        try:
            yield
        finally:
            self._unshare()

    def _share(self, wait: bool) -> None:
        if not self._readers_lock.acquire(blocking=wait):
            raise _Busy
        try:
            if self._readers == 0:
                try:
                    fcntl.flock(self._shared_fd, fcntl.LOCK_SH | (0 if wait else fcntl.LOCK_NB))
                except BlockingIOError:
                    raise _Busy from None
            self._readers += 1
        finally:
            self._readers_lock.release()

    def _unshare(self) -> None:
        with self._readers_lock:
            self._readers -= 1
            if self._readers == 0:
                fcntl.flock(self._shared_fd, fcntl.LOCK_UN)

    def _journal_marked(self) -> bool:
        """Whether a batch's writer may have died between its journal and its last rename:
        the counter is odd from before the journal until after it is removed."""
        return self._batches() % 2 == 1

    def _batches(self) -> int:
        assert self._mark is not None
        return int(_MARK.unpack_from(self._mark)[0])

    def _bump_batches(self, odd: bool) -> None:
        """To odd before a journal, to even once it is removed (under the exclusive lock)."""
        assert self._mark is not None
        count = self._batches()
        if count % 2 != odd:
            _MARK.pack_into(self._mark, 0, count + 1)

    def _replay_journals(self) -> None:
        """Under the exclusive lock: rename what each journal still names into place (its
        temp files were fsynced before the journal was written), then remove the journal."""
        journals = [name for name, is_dir, _ in list_names(self._journal_fd) if not is_dir]
        for name in journals:
            fd = os.open(name, os.O_RDONLY | NOFOLLOW | CLOEXEC, dir_fd=self._journal_fd)
            with os.fdopen(fd, "rb") as journal:
                data = journal.read()
            try:
                entries = orjson.loads(data.split(b"\n", 1)[1])
            except (IndexError, orjson.JSONDecodeError):
                entries = []  # never renamed into place half written; not ours
            for temp, key in entries:
                try:
                    os.stat(temp, dir_fd=self._tmp_fd, follow_symlinks=False)
                except FileNotFoundError:
                    continue  # renamed before the writer died
                with self._key_dir(key, create=True) as where:
                    assert where is not None
                    self._refuse_folder(*where, key)
                    os.replace(temp, where[1], src_dir_fd=self._tmp_fd, dst_dir_fd=where[0])
                    self._sync_dir(where[0])
            os.unlink(name, dir_fd=self._journal_fd)
        if journals:
            self._sync_dir(self._journal_fd)
        self._bump_batches(odd=False)

    # ------------------------------------------------------------------ reading

    def _read_file(self, dir_fd: int, name: str, key: str, *,
                   damaged_ok: bool = False) -> Found | None:
        return read_file(dir_fd, name, key, repr(self), damaged_ok=damaged_ok)

    def _read_live(self, key: str, now: float) -> tuple[bytes | None, bool]:
        """The live value of ``key`` and whether an expired file was seen."""
        dirs, name = key_to_parts(key)
        if not dirs:  # a key of one piece: the file sits in the namespace folder
            found = self._read_file(self._dir_fd, name, key)
        else:
            with self._key_dir(key) as where:
                if where is None:
                    return None, False
                found = self._read_file(*where, key)
        if found is None:
            return None, False
        value, deadline = found
        if deadline is not None and deadline <= now:
            return None, True
        return value, False

    def _remove_if_expired(self, key: str) -> None:
        with self._locked(), self._key_dir(key) as where:
            if where is None:
                return
            found = self._read_file(*where, key)
            if found is not None and found[1] is not None and found[1] <= time.time():
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(where[1], dir_fd=where[0])
                self._remove_empty_folders([key])

    async def _get(self, key: str) -> bytes | None:
        before = self._batches()
        value, expired = self._read_live(key, time.time())
        if before % 2 or self._batches() != before:  # a batch ran meanwhile: read it locked
            try:
                with self._reading(wait=False):
                    value, expired = self._read_live(key, time.time())
            except _Busy:  # a writer holds the lock: wait for it on a thread, not on the loop
                value, expired = await self._run(self._read_live_shared, key)
        if expired:
            await self._run(self._remove_if_expired, key)
        return value

    def _read_live_shared(self, key: str) -> tuple[bytes | None, bool]:
        with self._reading():
            return self._read_live(key, time.time())

    def _get_many_sync(self, keys: list[str]) -> list[bytes | None]:
        now = time.time()
        values: list[bytes | None] = []
        expired: list[str] = []
        with self._reading():
            for key in keys:
                value, is_expired = self._read_live(key, now)
                if is_expired:
                    expired.append(key)
                values.append(value)
        for key in expired:  # the exclusive lock, once the shared one is released
            self._remove_if_expired(key)
        return values

    async def _get_many(self, keys: list[str]) -> list[bytes | None]:
        return await self._run(self._get_many_sync, keys)

    # ------------------------------------------------------------------ writing

    def _write_temp(self, value: bytes, deadline: float | None) -> str:
        """A fsynced temp file in ``.tmp/`` holding the header and ``value``; its name."""
        dir_fd = self._tmp_fd
        name = f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(8)}"
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW | CLOEXEC, 0o600,
                     dir_fd=dir_fd)
        try:
            data = memoryview(encode_header(deadline) + value)
            while data:
                data = data[os.write(fd, data):]
            if self.fsync:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=dir_fd)
            raise
        os.close(fd)
        return name

    def _refuse_folder(self, dir_fd: int, name: str, key: str) -> None:
        """A rename replaces a file, a FIFO or a symlink at ``name``, but not a folder: say so
        (a ``StoreError`` naming the key) rather than the OS error, which reads as an outage."""
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISDIR(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
                raise StoreError(f"{self!r}: the file of key {key!r} is a folder, not a "
                                 "regular file (placed there by something other than "
                                 "kvsessions); remove it")

    def _sync_dir(self, dir_fd: int) -> None:
        if self.fsync:
            os.fsync(dir_fd)

    def _put_sync(self, key: str, value: bytes, deadline: float | None,
                  only_if_absent: bool = False) -> bool:
        """The temp file is written first; its folder is opened (made if needed) and the
        rename done under the lock, since a delete may remove the folder it left empty."""
        temp = self._write_temp(value, deadline)
        with contextlib.ExitStack() as folder:  # kept open after the lock, for the fsync
            try:
                with self._locked():
                    where = folder.enter_context(self._key_dir(key, create=True))
                    assert where is not None
                    dir_fd, name = where
                    if only_if_absent:
                        found = self._read_file(dir_fd, name, key)
                        if found is not None and (found[1] is None or found[1] > time.time()):
                            os.unlink(temp, dir_fd=self._tmp_fd)
                            return False
                    else:
                        self._refuse_folder(dir_fd, name, key)
                    os.replace(temp, name, src_dir_fd=self._tmp_fd, dst_dir_fd=dir_fd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temp, dir_fd=self._tmp_fd)
                raise
            self._sync_dir(dir_fd)
        return True

    async def _put(self, key: str, value: bytes, ttl: float | None) -> None:
        await self._run(self._put_sync, key, value, expires_at(ttl))

    async def _put_if_absent(self, key: str, value: bytes, ttl: float | None) -> bool:
        return await self._run(self._put_sync, key, value, expires_at(ttl), True)

    def _compare_and_set_sync(self, key: str, expected: bytes | None, new: bytes | None,
                              deadline: float | None) -> bool:
        """The new value is written and fsynced to a temp file first; the comparison and the
        rename (or unlink) then happen under the namespace lock, which every rename and unlink
        of this namespace takes, in every process: nothing can change the file in between.
        The folder is opened under that lock too (a delete may remove a folder it empties)."""
        temp = None if new is None else self._write_temp(new, deadline)
        with contextlib.ExitStack() as folder:  # kept open after the lock, for the fsync
            try:
                with self._locked():
                    where = folder.enter_context(self._key_dir(key, create=new is not None))
                    if where is None:  # no folder, so no file: the value is absent
                        return expected is None
                    dir_fd, name = where
                    found = self._read_file(dir_fd, name, key)
                    live = found is not None and (found[1] is None or found[1] > time.time())
                    if (found[0] if found is not None and live else None) != expected:
                        return False
                    if temp is None:
                        if found is not None:  # the unlink made durable before its folder goes
                            os.unlink(name, dir_fd=dir_fd)
                            self._sync_dir(dir_fd)
                            self._remove_empty_folders([key])
                        return True
                    os.replace(temp, name, src_dir_fd=self._tmp_fd, dst_dir_fd=dir_fd)
                    temp = None
            finally:
                if temp is not None:
                    with contextlib.suppress(OSError):
                        os.unlink(temp, dir_fd=self._tmp_fd)
            self._sync_dir(dir_fd)
        return True

    async def _compare_and_set(
        self, key: str, expected: bytes | None, new: bytes | None, ttl: float | None
    ) -> bool:
        return await self._run(self._compare_and_set_sync, key, expected, new, expires_at(ttl))

    def _put_many_sync(self, items: list[tuple[str, bytes]], deadline: float | None) -> None:
        """All temp files written and fsynced first, then renamed under one lock, which
        readers hold shared: a failure before the renames changes nothing, and no reader sees
        part of the batch. With several keys a journal makes it all or nothing across a crash
        too (see the module's docstring). Each folder is opened once per batch."""
        folders: dict[tuple[str, ...], int] = {(): self._dir_fd}
        staged: list[list[Any]] = []  # [folder fd, temp name or None once renamed, name, key]
        journal = None  # its name, once the temp files are written
        journaled = False  # from then on the journal finishes the batch, whatever happens
        try:
            for key, value in items:
                entry: list[Any] = [-1, None, "", key]
                staged.append(entry)
                entry[1] = self._write_temp(value, deadline)
            if len(staged) > 1:
                journal = self._write_temp(
                    orjson.dumps([[entry[1], entry[3]] for entry in staged]), None)
            with self._locked():  # folders too: a delete may remove one it left empty
                for entry in staged:  # checked before the first rename: all or nothing
                    dirs, entry[2] = key_to_parts(entry[3])
                    entry[0] = self._folder(folders, tuple(dirs))
                    self._refuse_folder(entry[0], entry[2], entry[3])
                if journal is not None:
                    self._bump_batches(odd=True)  # the mark: see _journal_marked
                    os.replace(journal, journal, src_dir_fd=self._tmp_fd,
                               dst_dir_fd=self._journal_fd)
                    journaled = True
                    self._sync_dir(self._journal_fd)
                for entry in staged:
                    os.replace(entry[1], entry[2], src_dir_fd=self._tmp_fd,
                               dst_dir_fd=entry[0])
                    entry[1] = None
                if journal is not None:
                    for dir_fd in dict.fromkeys(entry[0] for entry in staged):
                        self._sync_dir(dir_fd)
                    os.unlink(journal, dir_fd=self._journal_fd)
                    self._bump_batches(odd=False)
            if not journaled:
                for dir_fd in dict.fromkeys(entry[0] for entry in staged):
                    self._sync_dir(dir_fd)
        finally:
            if not journaled:
                if journal is not None:
                    with contextlib.suppress(OSError):
                        os.unlink(journal, dir_fd=self._tmp_fd)
                for _, temp, _, _ in staged:
                    if temp is not None:
                        with contextlib.suppress(OSError):
                            os.unlink(temp, dir_fd=self._tmp_fd)
            for path, opened_fd in folders.items():
                if path:
                    os.close(opened_fd)

    def _folder(self, opened: dict[tuple[str, ...], int], dirs: tuple[str, ...]) -> int:
        """The descriptor of the folder ``dirs`` (created if needed), opened once and kept in
        ``opened``, whose caller closes them."""
        found = opened.get(dirs)
        if found is None:
            parent = self._folder(opened, dirs[:-1])
            found = opened[dirs] = self._open_dir(parent, dirs[-1], create=True)
        return found

    async def _put_many(self, items: list[tuple[str, bytes]], ttl: float | None) -> None:
        await self._run(self._put_many_sync, items, expires_at(ttl))

    def _delete_sync(self, keys: list[str]) -> int:
        """Unlink under the lock, then fsync the folders: an acknowledged delete must not come
        back after a power cut (once for the namespace folder, however many keys). Every file
        is read before the first unlink, so a key whose file is not a file (a FIFO, a folder)
        fails the call before anything is removed."""
        count = 0
        sync_root = False
        with self._locked():
            now = time.time()
            present: list[str] = []
            for key in keys:
                with self._key_dir(key) as where:
                    # A damaged file is deleted (the repair); what is not a file raises.
                    found = None if where is None else self._read_file(*where, key,
                                                                       damaged_ok=True)
                if found is not None:
                    present.append(key)
                    count += found[1] is None or found[1] > now
            for key in present:
                with self._key_dir(key) as where:
                    assert where is not None  # folders are only removed under this lock
                    os.unlink(where[1], dir_fd=where[0])
                    if where[0] == self._dir_fd:
                        sync_root = True
                    else:
                        self._sync_dir(where[0])
            if sync_root:
                self._sync_dir(self._dir_fd)
            self._remove_empty_folders(present)
        return count

    def _remove_empty_folders(self, keys: list[str]) -> None:
        """Under the exclusive lock, once ``keys`` are deleted: remove the folders this left
        empty, deepest first, so that a scan never lists the folders of deleted sessions (a
        namespace's history). Writers open a key's folder under the same lock, so none can
        be renaming into a folder removed here. Removing a folder is not fsynced: an empty
        folder back after a power cut is harmless."""
        for dirs in sorted({tuple(key_to_parts(key)[0]) for key in keys}, key=len,
                           reverse=True):
            opened = [self._dir_fd]
            try:
                for part in dirs[:-1]:
                    opened.append(self._open_dir(opened[-1], part))
                for depth in range(len(dirs) - 1, -1, -1):
                    os.rmdir(dirs[depth], dir_fd=opened[depth])
            except OSError:  # not empty (or already gone): so are the folders above it
                pass
            finally:
                for fd in opened[1:]:
                    os.close(fd)

    async def _delete(self, key: str) -> bool:
        return bool(await self._run(self._delete_sync, [key]))

    async def _delete_many(self, keys: list[str]) -> int:
        return await self._run(self._delete_sync, keys)

    # ------------------------------------------------------------------ ordered scan

    def _list_keys(self, key_range: KeyRange) -> list[str]:
        """Keys in ``key_range``, sorted, from the names in its folders (no file is read)."""
        return list_keys(self._dir_fd, key_range.lower, key_range.lower_inclusive,
                         key_range.upper, self._open_dir)

    def _read_page(self, keys: list[str]) -> list[tuple[str, bytes]]:
        with self._reading():
            items, expired = self._read_values(keys)
        for key in expired:
            self._remove_if_expired(key)
        return items

    def _list_and_read(self, key_range: KeyRange, reverse: bool,
                       limit: int) -> tuple[list[str], list[tuple[str, bytes]]]:
        """All keys in ``key_range`` in scan order, and the live values of the first ``limit``,
        listed and read under one shared lock: that page sees a batch wholly or not at all."""
        with self._reading():
            keys = self._list_keys(key_range)
            if reverse:
                keys.reverse()
            items, expired = self._read_values(keys[:limit])
        for key in expired:
            self._remove_if_expired(key)
        return keys, items

    def _read_values(self, keys: list[str]) -> tuple[list[tuple[str, bytes]], list[str]]:
        """The live values of ``keys`` and the expired keys met; each folder is opened once
        for the page (a page is mostly one session's folder)."""
        now = time.time()
        items: list[tuple[str, bytes]] = []
        expired: list[str] = []
        folders: dict[tuple[str, ...], int] = {(): self._dir_fd}
        try:
            for key in keys:
                dirs, name = key_to_parts(key)
                try:
                    dir_fd = self._existing_folder(folders, tuple(dirs))
                except FileNotFoundError:
                    continue
                found = self._read_file(dir_fd, name, key)
                if found is None:
                    continue
                if found[1] is not None and found[1] <= now:
                    expired.append(key)
                else:
                    items.append((key, found[0]))
        finally:
            for path, opened_fd in folders.items():
                if path:
                    os.close(opened_fd)
        return items, expired

    def _existing_folder(self, opened: dict[tuple[str, ...], int],
                         dirs: tuple[str, ...]) -> int:
        """Like ``_folder``, without creating: ``FileNotFoundError`` when it is missing."""
        found = opened.get(dirs)
        if found is None:
            parent = self._existing_folder(opened, dirs[:-1])
            found = opened[dirs] = self._open_dir(parent, dirs[-1])
        return found

    async def _scan(
        self, key_range: KeyRange, reverse: bool, limit: int | None = None
    ) -> AsyncIterator[list[tuple[str, bytes]]]:
        batch = self.scan_batch_size if limit is None else min(self.scan_batch_size, limit)
        keys, page = await self._run(self._list_and_read, key_range, reverse, batch)
        if page:
            yield page
        for start in range(batch, len(keys), batch):
            page = await self._run(self._read_page, keys[start:start + batch])
            if page:
                yield page

    async def _scan_page(
        self, key_range: KeyRange, reverse: bool, limit: int
    ) -> tuple[list[tuple[str, bytes]], str | None]:
        keys, items = await self._run(self._list_and_read, key_range, reverse, limit)
        window = keys[:limit]
        return items, (window[-1] if len(window) == limit else None)
