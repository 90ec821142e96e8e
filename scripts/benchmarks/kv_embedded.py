"""Embedded stores (SQLite, a folder of files) beside the raw code doing the same work.

SQLite: raw aiosqlite runs the same SQL on the same kind of table (``WITHOUT ROWID``, WAL,
``synchronous=NORMAL``, autocommit), in its own file. Files: the raw side writes a temporary
file, fsyncs it, renames it and fsyncs the folder (in a worker thread), and reads a file with
open/read/close. Every operation includes orjson encoding (writes) or decoding (reads) on both
sides. Ratio = our time / raw time.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiosqlite
import orjson

from benchmarks.harness import BenchContext, concurrently, decode_scan, document, repeat
from kvsessions.kv.sqlite import SQLiteStore

GET_PUT_TARGET, BATCH_TARGET = 1.25, 1.15
#: SQLite runs on a thread of its own, one hop a call where aiosqlite takes two: the hot-path
#: issue asks its get and put to beat raw aiosqlite (at most 0.6x its time).
SQLITE_GET_PUT_TARGET = 0.6
SCAN_DOCS = 20_000

TABLE = '"bench"'
CREATE = (f"CREATE TABLE IF NOT EXISTS {TABLE} (key TEXT NOT NULL PRIMARY KEY, value BLOB NOT "
          "NULL, expires_at REAL) WITHOUT ROWID")
PUT = (f"INSERT INTO {TABLE} (key, value, expires_at) VALUES (?, ?, ?) ON CONFLICT(key) DO UPDATE "
       "SET value = excluded.value, expires_at = excluded.expires_at")
GET = f"SELECT value FROM {TABLE} WHERE key = ? AND (expires_at IS NULL OR expires_at > ?)"
PAGE = (f"SELECT key, value FROM {TABLE} WHERE key > ? AND (expires_at IS NULL OR expires_at > ?) "
        "ORDER BY key LIMIT ?")


async def run(ctx: BenchContext) -> None:
    folder = Path(tempfile.mkdtemp(prefix="kvsessions-bench-"))
    try:
        if ctx.wanted("sqlite"):
            await bench_sqlite(ctx, folder)
        if ctx.wanted("file"):
            await bench_file(ctx, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


async def operations(ctx: BenchContext, backend: str, ours: Any, raw: Any,
                     get_put_target: float = GET_PUT_TARGET) -> None:
    """The five rows, for an adapter and a raw object with the same async methods."""
    n = ctx.n(2000)
    docs = [orjson.dumps(document(i)) for i in range(n)]
    keys = [f"doc:{i:08d}" for i in range(n)]

    async def put_ours(i: int) -> None:
        await ours.put(keys[i], orjson.dumps(document(i)))

    async def put_raw(i: int) -> None:
        await raw.put(keys[i], orjson.dumps(document(i)))

    await row(ctx, "put", backend, n, lambda: repeat(n, put_ours), lambda: repeat(n, put_raw),
              get_put_target)

    async def get_ours(i: int) -> None:
        orjson.loads(await ours.get(keys[i]))  # type: ignore[arg-type]

    async def get_raw(i: int) -> None:
        orjson.loads(await raw.get(keys[i]))

    await row(ctx, "get", backend, n, lambda: repeat(n, get_ours), lambda: repeat(n, get_raw),
              get_put_target)
    await row(ctx, "16 concurrent gets", backend, n, lambda: concurrently(n, 16, get_ours),
              lambda: concurrently(n, 16, get_raw), get_put_target)

    batches = max(1, n // 100)

    async def many(target: Any) -> None:
        for b in range(batches):
            await target.put_many(
                [(keys[i], orjson.dumps(document(i))) for i in range(b * 100, b * 100 + 100)
                 if i < n])

    await row(ctx, "put_many(100)", backend, batches * 100, lambda: many(ours),
              lambda: many(raw), BATCH_TARGET)

    total = ctx.n(SCAN_DOCS)
    for start in range(0, total, 1000):
        chunk = [(f"scan:{i:08d}", docs[i % n]) for i in range(start, min(total, start + 1000))]
        await ours.put_many(chunk)
        await raw.put_many(chunk)

    def scan_ours() -> Awaitable[None]:
        return decode_scan(ours, "scan:", total)

    def scan_raw() -> Awaitable[None]:
        return decode_scan(raw, "scan:", total)

    await row(ctx, f"ordered scan of {total:,}", backend, total, scan_ours, scan_raw,
              BATCH_TARGET)


async def row(ctx: BenchContext, operation: str, backend: str, count: int,
              ours: Callable[[], Awaitable[Any]], raw: Callable[[], Awaitable[Any]],
              target: float) -> None:
    ours_rate, raw_rate = await ctx.paired(count, ours, raw)
    ctx.row("kv-embedded", operation, backend, ours_rate, raw_rate, target=target)


# ---------------------------------------------------------------------------- SQLite

class RawSQLite:
    """The same SQL through plain aiosqlite calls, as an application would write it."""

    def __init__(self, conn: aiosqlite.Connection, batch: int) -> None:
        self.conn = conn
        self.batch = batch

    async def put(self, key: str, value: bytes) -> None:
        await self.conn.execute_fetchall(PUT, (key, value, None))

    async def get(self, key: str) -> bytes | None:
        rows = list(await self.conn.execute_fetchall(GET, (key, time.time())))
        return rows[0][0] if rows else None

    async def put_many(self, items: list[tuple[str, bytes]]) -> None:
        await self.conn.execute("BEGIN IMMEDIATE")
        await self.conn.executemany(PUT, [(k, v, None) for k, v in items])
        await self.conn.execute("COMMIT")

    async def scan(self, prefix: str) -> Any:
        cursor = prefix
        first = True
        while True:
            sql = PAGE.replace("key > ?", "key >= ?") if first else PAGE
            rows = list(await self.conn.execute_fetchall(sql, (cursor, time.time(), self.batch)))
            first = False
            for key, value in rows:
                if not key.startswith(prefix):
                    return
                yield key, value
            if len(rows) < self.batch:
                return
            cursor = rows[-1][0]


async def bench_sqlite(ctx: BenchContext, folder: Path) -> None:
    store = SQLiteStore(folder / "ours.db", namespace="bench")
    await store.open()
    conn = await aiosqlite.connect(folder / "raw.db", isolation_level=None, timeout=30)
    await conn.execute("PRAGMA journal_mode = WAL")
    await conn.execute("PRAGMA synchronous = NORMAL")
    await conn.execute(CREATE)
    try:
        await operations(ctx, "sqlite", store, RawSQLite(conn, store.scan_batch_size),
                         SQLITE_GET_PUT_TARGET)
    finally:
        await conn.close()
        await store.close()


# ---------------------------------------------------------------------------- files

class RawFiles:
    """One file a key, written as a careful application would: temp file, fsync, rename,
    fsync the folder (in a worker thread); read with open/read/close."""

    def __init__(self, folder: Path, batch: int) -> None:
        folder.mkdir()
        self.folder = str(folder)
        self.batch = batch

    def _write(self, key: str, value: bytes) -> None:
        tmp = f"{self.folder}/.tmp-{os.getpid()}-{secrets.token_hex(6)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, value)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, f"{self.folder}/{key.encode().hex()}")

    def _sync_folder(self) -> None:
        fd = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _put(self, key: str, value: bytes) -> None:
        self._write(key, value)
        self._sync_folder()

    async def put(self, key: str, value: bytes) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self._put, key, value)

    def _read(self, name: str) -> bytes | None:
        try:
            fd = os.open(f"{self.folder}/{name}", os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            return os.read(fd, os.fstat(fd).st_size + 1)
        finally:
            os.close(fd)

    async def get(self, key: str) -> bytes | None:
        return self._read(key.encode().hex())

    def _put_many(self, items: list[tuple[str, bytes]]) -> None:
        for key, value in items:
            self._write(key, value)
        self._sync_folder()

    async def put_many(self, items: list[tuple[str, bytes]]) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self._put_many, items)

    async def scan(self, prefix: str) -> Any:
        loop = asyncio.get_running_loop()
        low = prefix.encode().hex()
        names = sorted(n for n in await loop.run_in_executor(None, os.listdir, self.folder)
                       if n.startswith(low))
        for start in range(0, len(names), self.batch):
            page = names[start:start + self.batch]
            values = await loop.run_in_executor(None, lambda p=page: [self._read(n) for n in p])
            for name, value in zip(page, values, strict=True):
                if value is not None:
                    yield bytes.fromhex(name).decode(), value


async def bench_file(ctx: BenchContext, folder: Path) -> None:
    from kvsessions.kv.file import FileStore

    store = FileStore(folder / "ours", namespace="bench")
    await store.open()
    try:
        await operations(ctx, "file", store, RawFiles(folder / "raw", store.scan_batch_size))
    finally:
        await store.close()
