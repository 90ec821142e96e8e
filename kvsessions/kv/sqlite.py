# ruff: noqa: S608  -- SQL is built only from the checked namespace identifier and "?" marks
"""SQLite on a thread of our own: one table per namespace, in WAL mode, in key order.

``sqlite:///path.db?namespace=NAME&busy_timeout=30000&durability=normal&batch_size=1000``
(``sqlite:///:memory:`` gives a private in-memory database that lives until ``close()``). The
path after ``sqlite:///`` is read as SQLAlchemy reads it: ``sqlite:///sessions.db`` is relative
to the working folder, ``sqlite:////srv/app/sessions.db`` (four slashes) is absolute.

Why it is built this way:

* The table is ``WITHOUT ROWID`` with the key as primary key, so rows sit in key order and an
  ordered scan reads the B-tree front to back. The key column uses SQLite's BINARY collation,
  which compares UTF-8 bytes: exactly the contract's order. Prefixes become key ranges
  (``prefix <= key < prefix_upper_bound(prefix)``); there is no LIKE anywhere.
* Each store has one ``sqlite3`` connection on one daemon thread (``sqlite_worker``), in
  autocommit mode, and for a file a second one used on the event loop (``sqlite_loop``).
  Every operation is one function run on one of them as one step, so no other task's
  statement can land inside its transaction.
  Reads run on the loop's connection (one trip to the thread and back cost more than a
  lookup), unless it is busy (see ``_read``). Writes run on the thread inside a ``BEGIN
  IMMEDIATE`` transaction that the writes queued at the same moment share (group commit: one
  commit, one fsync under ``durability=strict``, for all of them); each returns once that
  commit is done. A small write runs on the loop instead when that changes none of it: the
  thread is idle, the durability ``normal`` and nobody holds a lock (see ``_write``).
* The table's layout is versioned (``table_layouts``): ``open()`` upgrades a table made by an
  older release, and does not touch (or wait for) a database whose table is up to date.
* Expired rows are filtered in every read with the current time as a parameter; a partial
  index on ``expires_at`` makes the periodic purge cheap.
* Contention between processes never reaches the caller as "database is locked": writes take
  the write lock at their first statement (``BEGIN IMMEDIATE`` or a single autocommit write,
  both waited for by ``busy_timeout``), and the steps of opening a fresh file, which SQLite may
  refuse with SQLITE_BUSY without waiting, are retried until ``busy_timeout`` runs out.
  Opening a set-up table only reads (WAL readers never wait for a writer); the purge of expired
  rows at open is skipped when another connection holds the write lock.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from kvsessions.errors import (
    ConfigError,
    KVSessionsError,
    StoreError,
    StoreUnavailableError,
)
from kvsessions.kv.base import KeyRange, KVStore, expires_at
from kvsessions.kv.options import SHARED, Whole, batch_size_option, read_options
from kvsessions.kv.sqlite_fts import SQLiteTextIndex
from kvsessions.kv.sqlite_loop import (
    ELSEWHERE,
    LoopConnection,
    is_busy,
    limit_wal,
    others_waiting,
)
from kvsessions.kv.sqlite_worker import Discard, SQLiteWorker
from kvsessions.kv.table_layouts import TableLayouts
from kvsessions.kv.text_search import Accept, TextHit, TextIndex, ranked_pages
from kvsessions.urls import StoreURL

__all__ = ["SQLiteStore"]

_T = TypeVar("_T")

logger = logging.getLogger("kvsessions.kv.sqlite")
MEMORY = ":memory:"
_DURABILITY = {"normal": 1, "strict": 2}  # PRAGMA synchronous values: NORMAL, FULL
#: Keys bound in one ``IN (...)`` list; below every SQLite's variable limit (999 before 3.32).
_IN_CHUNK = 500
#: Seconds between purges of expired rows, each done on a write.
_PURGE_INTERVAL = 60.0
#: Bytes of keys and values a write may carry and still run on the event loop: past this the
#: hop to the thread is a small part of its cost, and the loop would stall for longer.
LOOP_WRITE_BYTES = 64 * 1024

#: The table's layouts, oldest first (see ``table_layouts``). Append only.
LAYOUTS = TableLayouts([
    (  # 1: rows in key order (BINARY: UTF-8 byte order) and the index the purge reads
        "CREATE TABLE IF NOT EXISTS {table} (key TEXT NOT NULL PRIMARY KEY, "
        "value BLOB NOT NULL, expires_at REAL) WITHOUT ROWID",
        # Named "<namespace>:expires": no namespace holds a ':', so the index never takes the
        # name of another namespace's table. Releases before layout versions named it
        # "<namespace>__expires", the table name of namespace "<namespace>__expires": dropped.
        'CREATE INDEX IF NOT EXISTS "{name}:expires" ON {table} (expires_at) '
        "WHERE expires_at IS NOT NULL",
        'DROP INDEX IF EXISTS "{name}__expires"',
    ),
])


def _check_table_name(db: sqlite3.Connection, namespace: str, path: str) -> None:
    """Each namespace gets its own table, or is refused. SQLite compares names without case
    and gives indexes the names tables would have, so a namespace whose name another
    namespace's table holds in another case (``Tenant_x`` beside ``tenant_x``), or an older
    release's expiry index (``X__expires`` of ``X``), would share or break that table.
    Refusing keeps every existing store readable: no table is renamed, and a table name
    encoding case would have moved every namespace with a capital letter."""
    rows = db.execute("SELECT type, name, tbl_name FROM sqlite_master "
                      "WHERE name = ? COLLATE NOCASE", (namespace,)).fetchall()
    for kind, name, table in rows:
        if kind == "table" and name == namespace:
            continue
        if kind == "table":
            raise ConfigError(f"namespace {namespace!r} cannot be opened in {path}: namespace "
                              f"{name!r} has that table already (SQLite table names ignore "
                              "case); choose another namespace")
        raise ConfigError(f"namespace {namespace!r} cannot be opened in {path}: the {kind} "
                          f"{name!r} of namespace {table!r} has that name; open namespace "
                          f"{table!r} once with this release (which renames its index), or "
                          "choose another namespace")


class SQLiteStore(KVStore):
    """A namespace is a table; several namespaces (and processes) can share one file."""

    declared_options = (*SHARED, batch_size_option(1000),
                        Whole("busy_timeout", 30_000, minimum=0, unit="milliseconds"))
    #: The connection used on the event loop (None for ``:memory:``, which a second
    #: connection cannot see).
    _loop_connection: LoopConnection | None = None

    def __init__(
        self,
        path: str | Path,
        *,
        namespace: str | None = None,
        busy_timeout: int | None = None,
        durability: str | None = None,
        batch_size: int | None = None,
    ) -> None:
        settings = read_options(self.declared_options, {
            "namespace": namespace, "busy_timeout": busy_timeout, "durability": durability,
            "batch_size": batch_size})
        super().__init__(namespace=settings["namespace"])
        self.busy_timeout: int = settings["busy_timeout"]
        self.durability: str = settings["durability"]
        self.scan_batch_size = settings["batch_size"]
        self.path = MEMORY if str(path) == MEMORY else str(Path(path).expanduser().absolute())
        self._conn: SQLiteWorker | None = None
        self._text_indexes: dict[TextIndex, SQLiteTextIndex] = {}
        self._next_purge = 0.0
        table = f'"{self.namespace}"'  # a checked identifier: letters, digits, '_'
        live = "(expires_at IS NULL OR expires_at > ?)"
        self._sql_get = f"SELECT value FROM {table} WHERE key = ? AND {live}"
        self._sql_put = (
            f"INSERT INTO {table} (key, value, expires_at) VALUES (?, ?, ?) ON CONFLICT(key) "
            "DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at")
        self._sql_put_if_absent = (
            f"INSERT INTO {table} (key, value, expires_at) VALUES (?, ?, ?) ON CONFLICT(key) "
            "DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at "
            "WHERE expires_at IS NOT NULL AND expires_at <= ?")
        self._sql_delete = f"DELETE FROM {table} WHERE key = ? AND {live}"
        self._sql_purge = f"DELETE FROM {table} WHERE expires_at <= ?"
        self._table = table
        self._live = live

    # ------------------------------------------------------------------ text search

    text_search = "fts5"

    async def _search_text(self, index: TextIndex, terms: list[str], within: str, limit: int,
                           accept: Accept | None) -> list[TextHit]:
        """FTS5 (``sqlite_fts``); the scan where this SQLite was built without it."""
        fts = self._text_indexes.get(index)
        if fts is None:
            fts = SQLiteTextIndex(self.namespace, index)
            try:
                await self._in_thread(self._conn, fts.ensure)
            except sqlite3.OperationalError as exc:
                if "fts5" not in str(exc):
                    raise
                self.text_search = "scan"
                return await super()._search_text(index, terms, within, limit, accept)
            self._text_indexes[index] = fts
        ready = fts

        def page(size: int, offset: int) -> Awaitable[list[TextHit]]:
            return self._in_thread(
                self._conn, lambda db: ready.page(db, terms, within, size, offset))

        return await ranked_pages(page, limit, accept)

    @classmethod
    def from_url(cls, url: StoreURL, **given: Any) -> SQLiteStore:
        if url.host or url.port:
            raise ConfigError(
                f"{url.redacted}: a SQLite URL has no host; write sqlite:///relative/path.db "
                "or sqlite:////absolute/path.db")
        return cls(_database_path(url), **read_options(cls.declared_options, given, url))

    def __repr__(self) -> str:
        return f"SQLiteStore(path={self.path!r}, namespace={self.namespace!r})"

    # ------------------------------------------------------------------ lifecycle

    async def _open(self) -> None:
        if self.path != MEMORY:
            folder = Path(self.path)
            if folder.is_dir():
                raise ConfigError(f"{self!r}: {self.path} is a folder; give the path of a "
                                  "database file (sqlite:///folder/name.db)")
            folder.parent.mkdir(parents=True, exist_ok=True)
        worker = SQLiteWorker(f"kvsessions-sqlite-{self.namespace}")
        try:
            await worker.start(lambda: sqlite3.connect(
                self.path, timeout=self.busy_timeout / 1000, isolation_level=None))
            await worker.run(self._prepare_until_not_busy)
            if self.path != MEMORY:
                self._loop_connection = await worker.run(lambda _: LoopConnection(
                    self.path, synchronous=_DURABILITY[self.durability],
                    writes=self.durability == "normal",
                    checkpoint=lambda: worker.run_in_background(_checkpoint, "checkpoint")))
        except BaseException:
            await worker.stop()
            raise
        self._conn = worker

    async def _close(self) -> None:
        """The loop's connection first: the thread's, closed last, checkpoints the WAL
        into the database (SQLite does so when the last connection closes)."""
        conn, self._conn = self._conn, None
        loop_connection, self._loop_connection = self._loop_connection, None
        if loop_connection is not None:
            loop_connection.close()
        if conn is not None:
            await conn.stop()

    def _prepare_until_not_busy(self, db: sqlite3.Connection) -> None:
        """Retry what SQLite refuses with SQLITE_BUSY without calling the busy handler
        (switching to WAL, reading a schema that another process is changing)."""
        deadline = time.monotonic() + self.busy_timeout / 1000
        delay = 0.005
        while True:
            try:
                return self._prepare(db)
            except sqlite3.OperationalError as exc:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                if not is_busy(exc) or time.monotonic() >= deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    def _prepare(self, db: sqlite3.Connection) -> None:
        """Runs on the worker thread: pragmas, WAL, then the table at its newest layout."""
        db.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout)}")
        if self.path != MEMORY:
            mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"{self!r}: could not switch to WAL (journal_mode is {mode})")
            limit_wal(db)  # see sqlite_loop: the WAL's size says when to checkpoint
        wanted = _DURABILITY[self.durability]
        db.execute(f"PRAGMA synchronous = {wanted}")
        actual = db.execute("PRAGMA synchronous").fetchone()[0]
        if actual != wanted:
            raise StoreError(
                f"{self!r}: PRAGMA synchronous reads {actual} after setting {wanted}")
        if self._layout_version(db) != LAYOUTS.current:
            self._upgrade_layout(db)
        self._purge_unless_locked(db)

    def _layout_version(self, db: sqlite3.Connection) -> int:
        """The table's layout version, read without a lock (0: no row yet)."""
        try:
            row = db.execute(LAYOUTS.read_sql, LAYOUTS.read_parameters(self.namespace)).fetchone()
        except sqlite3.OperationalError as exc:
            if "no such table" not in str(exc):
                raise
            return 0
        return 0 if row is None else int(row[0])

    def _upgrade_layout(self, db: sqlite3.Connection) -> None:
        """The missing steps and the new version in one write transaction; the version is read
        again under the write lock, so of processes opening at once one runs each step."""
        db.execute("BEGIN IMMEDIATE")
        try:
            _check_table_name(db, self.namespace, self.path)
            db.execute(LAYOUTS.create_sql)
            version = self._layout_version(db)
            for sql in LAYOUTS.pending(version, name=self.namespace, owner=repr(self)):
                db.execute(sql)
            if version != LAYOUTS.current:
                db.execute(LAYOUTS.record_sql, (self.namespace, LAYOUTS.current))
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def _purge_unless_locked(self, db: sqlite3.Connection) -> None:
        """Remove expired rows now, unless another connection holds the write lock: opening
        never waits for a writer for this (later writes purge)."""
        db.execute("PRAGMA busy_timeout = 0")
        try:
            db.execute(self._sql_purge, (time.time(),))
            self._next_purge = time.time() + _PURGE_INTERVAL
        except sqlite3.OperationalError as exc:
            if not is_busy(exc):
                raise
            self._next_purge = 0.0
        finally:
            db.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout)}")

    @staticmethod
    async def _in_thread(conn: SQLiteWorker | None,
                         function: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``function(sqlite3_connection)`` on the store's thread, as one hop that no
        other task's statement can interleave with."""
        assert conn is not None
        return await conn.run(function)

    async def _write(self, function: Callable[[sqlite3.Connection], _T], *,
                     size: int | None, single: bool = False) -> _T:
        """Where a write job runs. ``function(sqlite3_connection)`` runs inside a write
        transaction (``single``: it runs one statement, and alone needs none), on the event
        loop when it can start at once without changing what the thread promises: it is
        small (``size``, the bytes of keys and values it writes, at most
        ``LOOP_WRITE_BYTES``; None: unknown, as for a purge), the loop's connection may
        write (a file at ``durability=normal``: under ``strict`` each commit fsyncs, and on
        the thread concurrent writes share one), the thread has no job queued or running (so
        a write queued there, a cancelled caller's too, never lands after this one, and
        while writes wait there the ones that follow join them and share their commits), no
        other task waits to run on this loop (``others_waiting``: concurrent writers keep
        both cores and group commit), no other thread's loop is using the connection and
        SQLite grants the write lock at once. Otherwise, or when SQLite answers busy midway
        (rolled back), on the store's thread, sharing a commit with the writes queued beside
        it and waiting for locks with ``busy_timeout``."""
        worker, here = self._conn, self._loop_connection
        assert worker is not None
        if here is not None and size is not None and size <= LOOP_WRITE_BYTES \
                and worker.idle and not others_waiting():
            done = here.write(function, single=single)
            if done is not ELSEWHERE:
                return done
        return await worker.write(function, single=single)

    # ------------------------------------------------------------------ single keys

    async def _read(self, read: Callable[[sqlite3.Connection], _T]) -> _T:
        """``read(connection)`` on the event loop's connection: a lookup or a page of a scan
        in WAL costs less than the hops to the thread and back (a load of 1,000 messages took
        four), and a WAL reader never waits for a writer. Should SQLite still answer busy (a
        checkpoint or recovery under way), or the connection be in use by another thread's
        loop, the read goes to the thread, which waits with ``busy_timeout``."""
        here = self._loop_connection
        if here is not None:
            done = here.read(read)
            if done is not ELSEWHERE:
                return done
        return await self._in_thread(self._conn, read)

    async def _get(self, key: str) -> bytes | None:
        sql, params = self._sql_get, (key, time.time())
        rows = await self._read(lambda db: db.execute(sql, params).fetchall())
        if not rows:
            return None
        return self._value(key, rows[0][0])

    async def _get_and_last(self, key: str, key_range: KeyRange
                            ) -> tuple[bytes | None, tuple[str, bytes] | None]:
        """Both reads in one ``_read``: one step on the loop's reader, not two tasks."""
        get, get_params = self._sql_get, (key, time.time())
        scan, scan_params = self._scan_sql(key_range, True, 1)

        def read(db: sqlite3.Connection) -> tuple[list[Any], list[Any]]:
            return (db.execute(get, get_params).fetchall(),
                    db.execute(scan, scan_params).fetchall())

        found, last = await self._read(read)
        return (self._value(key, found[0][0]) if found else None,
                (last[0][0], self._value(last[0][0], last[0][1])) if last else None)

    def _value(self, key: str, value: object) -> bytes:
        if type(value) is bytes:
            return value
        raise StoreError(
            f"{self!r}: the value stored under {key!r} is a {type(value).__name__}, not bytes "
            "(written by something other than kvsessions?)")

    async def _put(self, key: str, value: bytes, ttl: float | None) -> None:
        sql, params = self._sql_put, (key, value, expires_at(ttl))
        purge = self._purge_due(ttl)
        await self._write(lambda db: purge(db.execute(sql, params)),
                          size=_with_purge(purge, len(key) + len(value)), single=ttl is None)

    async def _delete(self, key: str) -> bool:
        sql, now = self._sql_delete, time.time()
        return bool(await self._write(
            lambda db: db.execute(sql, (key, now)).rowcount, size=len(key), single=True))

    async def _put_if_absent(self, key: str, value: bytes, ttl: float | None) -> bool:
        sql, params = self._sql_put_if_absent, (key, value, expires_at(ttl), time.time())
        purge = self._purge_due(ttl)
        stored = await self._write(
            lambda db: purge(db.execute(sql, params)).rowcount,
            size=_with_purge(purge, len(key) + len(value)), single=ttl is None)
        return bool(stored)

    async def _compare_and_set(
        self, key: str, expected: bytes | None, new: bytes | None, ttl: float | None
    ) -> bool:
        return await self._swap(key, expected, new, ttl, None, 0)

    async def _swap(self, key: str, expected: bytes | None, new: bytes | None,
                    ttl: float | None, also: Callable[[sqlite3.Connection], bool] | None,
                    also_size: int) -> bool:
        """Read, compare and write inside one write transaction on the worker thread: the
        write lock is held from the read on, so no other connection or process writes
        between them. ``also`` runs in the same transaction when the value matched; when it
        returns False, everything this call wrote is undone; ``also_size``: the bytes of keys
        and values it writes."""
        table, live, now, deadline = self._table, self._live, time.time(), expires_at(ttl)
        upsert = self._sql_put

        def swap(db: sqlite3.Connection) -> bool:
            row = db.execute(f"SELECT value FROM {table} WHERE key = ? AND {live}",
                             (key, now)).fetchone()
            current = None if row is None else self._value(key, row[0])
            swapped = current == expected
            if swapped and new is not None:
                db.execute(upsert, (key, new, deadline))
            elif swapped and current is not None:
                db.execute(f"DELETE FROM {table} WHERE key = ?", (key,))
            if swapped and also is not None and not also(db):
                raise Discard(False)
            return swapped

        swapped = await self._write(
            swap, size=len(key) + len(new or b"") + also_size)
        if ttl is not None:
            await self._maybe_purge()
        return swapped

    _atomic_compare_and_set_with = True

    async def _compare_and_set_with(self, key: str, expected: bytes | None,
                                    new: bytes | None, create: list[tuple[str, bytes]],
                                    put: list[tuple[str, bytes]], delete: list[str],
                                    swap: list[tuple[str, bytes, bytes | None]]) -> bool:
        """The compare-and-set's transaction, with the other writes inside it."""
        rows = [(other, value, None) for other, value in (*create, *put)]
        rows += [(other, value, None) for other, _, value in swap if value is not None]
        created = [other for other, _ in create]
        delete = [*delete, *(other for other, _, value in swap if value is None)]
        upsert, table, live, now = self._sql_put, self._table, self._live, time.time()

        def write_others(db: sqlite3.Connection) -> bool:
            for start in range(0, len(created), _IN_CHUNK):
                if _select_in(db, table, live, created[start:start + _IN_CHUNK], now):
                    return False  # a key to create is taken
            for other, read, _ in swap:
                row = db.execute(f"SELECT value FROM {table} WHERE key = ? AND {live}",
                                 (other, now)).fetchone()
                if row is None or self._value(other, row[0]) != read:
                    return False  # a key to swap holds another value
            if rows:
                db.executemany(upsert, rows)
            for start in range(0, len(delete), _IN_CHUNK):
                chunk = delete[start:start + _IN_CHUNK]
                db.execute(f"DELETE FROM {table} WHERE key IN ({', '.join('?' * len(chunk))})",
                           chunk)
            return True

        size = sum(len(other) + len(value) for other, value, _ in rows) + sum(map(len, delete))
        return await self._swap(key, expected, new, None, write_others, size)

    async def _maybe_purge(self) -> None:
        """Remove expired rows now and then; reads never depend on it."""
        now = time.time()
        if now >= self._next_purge:
            self._next_purge = now + _PURGE_INTERVAL
            sql = self._sql_purge
            await self._write(lambda db: db.execute(sql, (now,)), size=None, single=True)

    def _purge_due(self, ttl: float | None) -> Callable[[sqlite3.Cursor], sqlite3.Cursor]:
        """For a write with a ttl, now and then: a step, run on the thread after the write in
        the same hop, that removes expired rows (reads never depend on it)."""
        now = time.time()
        if ttl is None or now < self._next_purge:
            return _unchanged
        self._next_purge = now + _PURGE_INTERVAL
        sql = self._sql_purge

        def purge(cursor: sqlite3.Cursor) -> sqlite3.Cursor:
            assert cursor.connection is not None
            cursor.connection.execute(sql, (now,))
            return cursor

        return purge

    # ------------------------------------------------------------------ batches

    async def _get_many(self, keys: list[str]) -> list[bytes | None]:
        table, live, now = self._table, self._live, time.time()
        unique = list(dict.fromkeys(keys))

        def read(db: sqlite3.Connection) -> list[Any]:
            """Every chunk in one hop, in one read transaction (one snapshot)."""
            if len(unique) <= _IN_CHUNK:
                return _select_in(db, table, live, unique, now)
            db.execute("BEGIN")
            try:
                return [row for start in range(0, len(unique), _IN_CHUNK)
                        for row in _select_in(db, table, live,
                                              unique[start:start + _IN_CHUNK], now)]
            finally:
                db.execute("COMMIT")

        found = {key: self._value(key, value) for key, value in await self._read(read)}
        return [found.get(key) for key in keys]

    async def _put_many(self, items: list[tuple[str, bytes]], ttl: float | None) -> None:
        deadline = expires_at(ttl)
        rows = [(key, value, deadline) for key, value in items]
        sql = self._sql_put
        purge = self._purge_due(ttl)

        size = sum(len(key) + len(value) for key, value in items)
        await self._write(lambda db: purge(db.executemany(sql, rows)),
                          size=_with_purge(purge, size))

    async def _delete_many(self, keys: list[str]) -> int:
        table, live, now = self._table, self._live, time.time()

        def remove(db: sqlite3.Connection) -> int:
            count = 0
            for start in range(0, len(keys), _IN_CHUNK):
                chunk = keys[start:start + _IN_CHUNK]
                marks = ", ".join("?" * len(chunk))
                sql = f"DELETE FROM {table} WHERE key IN ({marks}) AND {live}"
                count += db.execute(sql, (*chunk, now)).rowcount
            return count

        return await self._write(remove, size=sum(map(len, keys)))

    # ------------------------------------------------------------------ ordered scan

    def _scan_sql(self, key_range: KeyRange, reverse: bool,
                  limit: int) -> tuple[str, list[object]]:
        where = ["key >= ?" if key_range.lower_inclusive else "key > ?"]
        params: list[object] = [key_range.lower]
        if key_range.upper is not None:
            where.append("key < ?")
            params.append(key_range.upper)
        params += [time.time(), limit]
        order = "DESC" if reverse else "ASC"
        return (f"SELECT key, value FROM {self._table} WHERE {' AND '.join(where)} "
                f"AND {self._live} ORDER BY key {order} LIMIT ?"), params

    async def _scan_page(
        self, key_range: KeyRange, reverse: bool, limit: int
    ) -> tuple[list[tuple[str, bytes]], str | None]:
        sql, params = self._scan_sql(key_range, reverse, limit)
        rows = await self._read(lambda db: db.execute(sql, params).fetchall())
        for key, value in rows:
            if type(value) is not bytes:
                self._value(key, value)
        return self._page(rows, limit)

    # ------------------------------------------------------------------ errors

    def _classify_error(self, exc: Exception) -> type[KVSessionsError] | None:
        if is_busy(exc):
            return StoreUnavailableError
        if isinstance(exc, sqlite3.OperationalError):
            text = str(exc).lower()
            if any(word in text for word in ("unable to open", "disk i/o", "readonly",
                                             "read-only", "disk is full", "no such table")):
                return StoreUnavailableError
            return StoreError
        if isinstance(exc, sqlite3.Error):
            return StoreError
        if isinstance(exc, ValueError) and "closed" in str(exc).lower():
            return StoreUnavailableError  # the store's thread has stopped
        return None


def _select_in(db: sqlite3.Connection, table: str, live: str, keys: list[str],
               now: float) -> list[Any]:
    marks = ", ".join("?" * len(keys))
    sql = f"SELECT key, value FROM {table} WHERE key IN ({marks}) AND {live}"
    return db.execute(sql, (*keys, now)).fetchall()


def _unchanged(cursor: sqlite3.Cursor) -> sqlite3.Cursor:
    return cursor


def _with_purge(purge: Callable[[sqlite3.Cursor], sqlite3.Cursor], size: int) -> int | None:
    """The size of a write (``_write``): unknown when a purge of expired rows comes with it."""
    return size if purge is _unchanged else None


def _checkpoint(db: sqlite3.Connection) -> None:
    """What the loop's writes leave to the thread (``sqlite_loop``): copy the WAL into the
    database as far as no reader needs it, waiting for nobody."""
    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()


def _database_path(url: StoreURL) -> str:
    """The file a URL names, as SQLAlchemy reads it: what follows ``sqlite:///``, so a relative
    path (``sqlite:///sessions.db``, resolved against the working folder when opened) or an
    absolute one (``sqlite:////srv/app/sessions.db``). Releases before this one read the first
    form as absolute: when the relative file does not exist and the absolute one does, say so
    (a new, empty database is about to be made beside the user's data)."""
    if url.path in ("/" + MEMORY, MEMORY):
        return MEMORY
    if not url.path.startswith("/") or url.path == "/":
        raise ConfigError(f"{url.redacted}: expected sqlite:///relative/path.db or "
                          "sqlite:////absolute/path.db")
    path = url.path[1:]
    if not path.startswith("/") and not os.path.lexists(path) \
            and os.path.isfile(os.path.join("/", path)):
        logger.warning("%s is %s in the working folder, which does not exist yet; /%s does: "
                       "for that one write sqlite:////%s (four slashes)", url.redacted, path,
                       path, path)
    return path
