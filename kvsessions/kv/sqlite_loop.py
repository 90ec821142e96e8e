"""The SQLite store's connection on the event loop: reads, and writes while its thread is idle.

A hop to the store's thread and back (``sqlite_worker``) costs more than a lookup or a small
write in WAL mode, so a store operation runs right on the caller's event loop, on a connection
of its own, whenever that changes nothing the thread promises. The store decides which writes
may come here (``SQLiteStore._write``); this connection makes sure that what runs here never
waits and never checkpoints:

* It never waits for a lock (``busy_timeout`` 0): when SQLite answers busy or locked (another
  process or connection writes, a checkpoint or recovery is under way), what the job wrote so
  far is rolled back and the caller gets ``ELSEWHERE``: the operation goes to the store's
  thread, which waits with ``busy_timeout`` as before. A write job may run more than once
  there anyway, and nothing of this attempt is kept or reported.
* One caller at a time: event loops in other threads may use the same store; the one that
  takes the lock uses the connection, the others get ``ELSEWHERE`` (nobody waits for the lock).
* A write job runs as on the thread (``write_together``, ``run_alone``): one transaction
  (``BEGIN IMMEDIATE`` .. ``COMMIT``), or one autocommit statement for a one-statement job;
  ``Discard`` rolls back and returns its result; an exception rolls back and propagates; a
  cursor the job returns is closed. The caller returns after the commit, as from the thread,
  and a process killed before it leaves what SQLite leaves of any unfinished transaction:
  nothing (a WAL transaction without its commit record is ignored).
* It never checkpoints (``wal_autocheckpoint=0``): a checkpoint copies the WAL into the
  database and, under ``synchronous=NORMAL``, fsyncs both, which has no place on an event
  loop. The store's thread does, as SQLite would after a commit: once the WAL file holds more
  than ``WAL_PAGES`` pages (SQLite's own automatic checkpoint comes after 1,000), a write here
  asks the thread for a PASSIVE checkpoint. It is a job like the others, so the writes that
  follow wait for it on the thread, and then the WAL starts again from its beginning instead
  of growing. The WAL file's size counts pages, whatever the rows (a row can be a fraction
  of a page or many pages), because ``journal_size_limit`` cuts the file back to
  ``WAL_PAGES`` pages whenever the WAL starts again (``limit_wal``, set on both connections):
  it grows past them only when more pages than that wait for a checkpoint.
* A connection that may not write (``durability=strict``: there each commit fsyncs, and on the
  thread concurrent writes share that fsync) is ``query_only``: SQLite itself refuses a write.

Why one connection for reads and writes, not a read-only one beside a writable one: both run
synchronously on the loop, so on one loop they never overlap; one lock, one busy rule and one
place to close keep it simple. What two would add, a read of one thread's loop during a write
of another's, is rare, and that read still runs, on the store's thread.
"""

from __future__ import annotations

import asyncio
import enum
import os
import sqlite3
import threading
from collections.abc import Callable
from typing import Final, TypeVar

from kvsessions.kv.sqlite_worker import Step, run_alone, write_together

__all__ = ["ELSEWHERE", "WAL_PAGES", "LoopConnection", "is_busy", "limit_wal",
           "others_waiting"]

_T = TypeVar("_T")
_BUSY_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})
#: Pages in the WAL beyond which a write on the loop asks the store's thread for a checkpoint.
WAL_PAGES = 1000


def others_waiting() -> bool:
    """Whether other callbacks (other tasks) wait to run on this event loop. Then a write
    goes to the store's thread even when it is idle: the loop runs the others' Python while
    the thread runs SQLite on another core, and concurrent writes share commits there (16
    appenders on one loop wrote a third less per second with every write on the loop). An
    event loop that does not keep asyncio's ready queue (``_ready``) counts as idle."""
    ready = getattr(asyncio.get_running_loop(), "_ready", None)
    return bool(ready)


class _Elsewhere(enum.Enum):
    ELSEWHERE = "run it on the store's thread"


#: What ``read`` and ``write`` return when the job did not run here.
ELSEWHERE: Final = _Elsewhere.ELSEWHERE


def is_busy(exc: BaseException) -> bool:
    """SQLITE_BUSY or SQLITE_LOCKED (any extended code): another connection holds a lock."""
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in _BUSY_CODES
    text = str(exc)
    return "locked" in text or "busy" in text


def limit_wal(db: sqlite3.Connection) -> int:
    """Have ``db`` cut the WAL file back to ``WAL_PAGES`` pages when the WAL starts again;
    that size in bytes (a WAL header, then each page after a frame header)."""
    page_size = int(db.execute("PRAGMA page_size").fetchone()[0])
    limit = 32 + WAL_PAGES * (24 + page_size)
    db.execute(f"PRAGMA journal_size_limit = {limit}")
    return limit


class LoopConnection:
    """Made on the store's thread (opening touches the disk), used on event loops."""

    def __init__(self, path: str, *, synchronous: int, writes: bool,
                 checkpoint: Callable[[], None]) -> None:
        db = sqlite3.connect(path, timeout=0, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA wal_autocheckpoint = 0")
            db.execute(f"PRAGMA synchronous = {int(synchronous)}")
            self._wal_limit = limit_wal(db)
            if not writes:
                db.execute("PRAGMA query_only = 1")
        except BaseException:
            db.close()
            raise
        self._db = db
        #: False under ``durability=strict``: reads only.
        self.writes = writes
        self._wal = path + "-wal"
        self._checkpoint = checkpoint
        self._lock = threading.Lock()

    def read(self, read: Callable[[sqlite3.Connection], _T]) -> _T | _Elsewhere:
        """``read(connection)`` here, or ``ELSEWHERE``."""
        if not self._lock.acquire(blocking=False):
            return ELSEWHERE
        try:
            return read(self._db)
        except sqlite3.OperationalError as exc:
            if not is_busy(exc):
                raise
            return ELSEWHERE
        finally:
            self._lock.release()

    def write(self, function: Callable[[sqlite3.Connection], _T], *,
              single: bool) -> _T | _Elsewhere:
        """The write job ``function`` here, committed, or ``ELSEWHERE`` (not run, or rolled
        back). ``single``: it runs one statement (in autocommit mode)."""
        if not self.writes or not self._lock.acquire(blocking=False):
            return ELSEWHERE
        db = self._db
        step = Step(function, single)
        try:
            before = db.total_changes
            if single:
                run_alone(db, step)
            else:
                write_together(db, [step])
            if isinstance(step.result, sqlite3.Cursor):
                step.result.close()
                step.result = None
            if step.error is None and db.total_changes != before:
                self._checkpoint_if_due()
        finally:
            if db.in_transaction:  # only if a ROLLBACK failed: never keep the write lock
                db.execute("ROLLBACK")
            self._lock.release()
        if step.error is not None:
            if is_busy(step.error):
                return ELSEWHERE
            raise step.error
        result: _T = step.result
        return result

    def _checkpoint_if_due(self) -> None:
        """Ask the thread for a checkpoint when the WAL has grown past ``WAL_PAGES`` pages."""
        try:
            size = os.stat(self._wal).st_size
        except FileNotFoundError:
            return
        if size > self._wal_limit:
            self._checkpoint()

    def close(self) -> None:
        with self._lock:
            self._db.close()
