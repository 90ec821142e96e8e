# ruff: noqa: S608  -- SQL is built only from the checked, quoted namespace identifier
"""PostgreSQL through asyncpg: one table per namespace, values as JSONB that psql can query.

``postgresql://user:password@host:5432/db?namespace=NAME&min_pool_size=1&max_pool_size=10
&connect_timeout=5&command_timeout=30&acquire_timeout=10&durability=normal&batch_size=1000``
(``postgres://`` works too; other query parameters, such as ``sslmode``, go to asyncpg).

Why it is built this way:

* The table is ``(key text COLLATE "C" PRIMARY KEY, value jsonb NOT NULL, raw bytea,
  expires_at timestamptz)``. The "C" collation compares bytes, which for UTF-8 is the
  contract's order, and lets a prefix become an index range (``prefix <= key < bound``, never
  LIKE). Scans are keyset pages over that index, so the first page costs the same at any size.
* Documents go into JSONB without a second serialisation: our connections carry a binary jsonb
  codec that passes the caller's bytes through (binary jsonb is a version byte, then the text).
* JSONB cannot keep every JSON document exactly: it refuses ``\\u0000`` in strings and it
  stores numbers as decimals, so ``1e16`` comes back as the integer ``10000000000000000`` and
  ``-0.0`` as ``0.0``. Such documents (see ``jsonb_loses``) also keep their exact bytes in
  ``raw``; ``value`` then holds a queryable
  copy (NULs as U+FFFD) and reads return ``raw``. Every other document has ``raw`` NULL.
* Expiry is on the server's clock (``now()``), for writers and readers alike, so clients with
  skewed clocks agree. Expired rows are filtered in every read and removed by later writes;
  ``DELETE FROM <table> WHERE expires_at <= now()`` purges the rest.
* Every operation is one statement, so one round trip: ``put_if_absent`` is an upsert whose
  update only fires on an expired row, ``put_many`` one ``unnest`` insert (chunks of
  ``batch_size`` in one transaction above that), ``delete_many`` one ``DELETE ... = ANY``.
* The store keeps its own small pool of asyncpg connections: taking an idle one is a list pop,
  where ``asyncpg.Pool`` adds an acquire/release cycle (and a reset query) measured at 30 % of
  a point read. A caller's ``asyncpg.Pool`` (``pool=``) is used as it is and never closed; its
  connections are not given our codec, so queries convert with ``jsonb_send``/``convert_from``.
"""

from __future__ import annotations

import asyncio
import functools
import math
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import orjson

from kvsessions.errors import (
    ConfigError,
    KVSessionsError,
    MissingDependencyError,
    StoreError,
    StoreUnavailableError,
)
from kvsessions.kv.base import KeyRange, KVStore
from kvsessions.kv.options import (
    SHARED,
    Duration,
    Whole,
    batch_size_option,
    check_pool_sizes,
    read_options,
    unknown_options,
)
from kvsessions.kv.registry import schemes_of
from kvsessions.urls import StoreURL, parse_store_url

try:
    import asyncpg
except ImportError:
    asyncpg = None

__all__ = ["PostgreSQLStore"]

Connection: TypeAlias = Any  # asyncpg.Connection or a pool's proxy of one (asyncpg is untyped)

#: synchronous_commit values under which a commit waits for the local WAL flush (and standbys).
_STRICT_COMMIT = frozenset({"on", "remote_apply"})
_UNKNOWN_SETTING = re.compile(r'unrecognized configuration parameter "([^"]*)"')
#: Seconds a cancelled call waits for the server to finish or abandon its statement.
_SETTLE_TIMEOUT = 5.0

# ---------------------------------------------------------------------------------- lossless

_NUL_ESCAPE = b"\\u0000"
#: A digit followed by an exponent mark: the only way a JSON number has an exponent.
_EXPONENT = re.compile(rb"[0-9][eE]")


def jsonb_loses(value: bytes) -> bool:
    """True when JSONB would not give ``value`` back as an equal document.

    JSONB refuses NUL in strings; it keeps a number as a decimal, which returns a float written
    with an exponent and no fraction left (``1e16``, ``1.5e300``) as an integer, and ``-0.0``
    as ``0.0``. Floats written without an exponent, and those whose decimal keeps a fraction
    (``2.5e-7`` is stored as ``0.00000025``), come back exactly. So: one substring test for
    NUL, then a walk of the decoded document for floats (its cost grows with the number of
    values, not with the length of strings); the exponent test runs only when an integral float
    is found, and may fire on a string ("3e4f"), which only costs a needless exact copy.
    """
    if _NUL_ESCAPE in value:
        return True
    stack: list[Any] = [orjson.loads(value)]
    exponent: bool | None = None
    while stack:
        node = stack.pop()
        kind = type(node)
        if kind is dict:
            stack.extend(node.values())
        elif kind is list:
            stack.extend(node)
        elif kind is float and node.is_integer():
            if node == 0.0 and math.copysign(1.0, node) < 0:
                return True
            if exponent is None:
                exponent = _EXPONENT.search(value) is not None
            if exponent:
                return True
    return False


def queryable_copy(value: bytes) -> bytes:
    """The document JSONB can hold: each ``\\u0000`` escape becomes ``\\ufffd``. (After an
    escaped backslash the text "u0000" becomes "ufffd": still valid, only this copy changes.)"""
    return value.replace(_NUL_ESCAPE, b"\\ufffd")


def _split(value: bytes) -> tuple[bytes, bytes | None]:
    """(value for the jsonb column, exact bytes for ``raw`` or None)."""
    if jsonb_loses(value):
        return queryable_copy(value), value
    return value, None


# ---------------------------------------------------------------------------------- SQL


@dataclass(frozen=True, slots=True)
class _Statements:
    create: str
    columns: str
    get: str
    get_many: str
    put: str
    put_if_absent: str
    put_many: str
    delete: str
    delete_many: str
    #: scan[(reverse, lower_inclusive, bounded)]
    scan: dict[tuple[bool, bool, bool], str]


def _quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _statements(table_name: str, *, with_codec: bool) -> _Statements:
    """Every statement the store runs. ``with_codec``: our connections carry the binary jsonb
    codec, so jsonb goes in and out as bytes; a caller's pool converts on the server instead."""
    table = _quote_identifier(table_name)
    if with_codec:
        value_in, values_in, value_out = "$2::jsonb", "$2::jsonb[]", "value"
        unnest_value = "v"
    else:
        value_in = "convert_from($2::bytea, 'UTF8')::jsonb"
        values_in, value_out = "$2::bytea[]", "substring(jsonb_send(value) from 2)"
        unnest_value = "convert_from(v, 'UTF8')::jsonb"
    live = "(expires_at IS NULL OR expires_at > now())"
    deadline = "now() + $4::float8 * interval '1 second'"
    upsert = ("ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, raw = EXCLUDED.raw, "
              "expires_at = EXCLUDED.expires_at")
    read = f"CASE WHEN raw IS NULL THEN {value_out} END, raw"
    scan: dict[tuple[bool, bool, bool], str] = {}
    for reverse in (False, True):
        for inclusive in (False, True):
            for bounded in (False, True):
                where = "key >= $1" if inclusive else "key > $1"
                if bounded:
                    where += " AND key < $3"
                order = "DESC" if reverse else "ASC"
                scan[reverse, inclusive, bounded] = (
                    f"SELECT key, {read} FROM {table} WHERE {where} AND {live} "
                    f"ORDER BY key {order} LIMIT $2")
    return _Statements(
        create=(f"CREATE TABLE IF NOT EXISTS {table} (key text COLLATE \"C\" PRIMARY KEY, "
                "value jsonb NOT NULL, raw bytea, expires_at timestamptz)"),
        columns=("SELECT a.attname, format_type(a.atttypid, a.atttypmod), c.collname "
                 "FROM pg_attribute a LEFT JOIN pg_collation c ON c.oid = a.attcollation "
                 "WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped"),
        get=f"SELECT {read} FROM {table} WHERE key = $1 AND {live}",
        get_many=f"SELECT key, {read} FROM {table} WHERE key = ANY($1::text[]) AND {live}",
        put=(f"INSERT INTO {table} (key, value, raw, expires_at) "
             f"VALUES ($1, {value_in}, $3::bytea, {deadline}) {upsert}"),
        put_if_absent=(f"INSERT INTO {table} AS t (key, value, raw, expires_at) "
                       f"VALUES ($1, {value_in}, $3::bytea, {deadline}) {upsert} "
                       "WHERE t.expires_at <= now() RETURNING true"),
        put_many=(f"INSERT INTO {table} (key, value, raw, expires_at) "
                  f"SELECT k, {unnest_value}, r, {deadline} "
                  f"FROM unnest($1::text[], {values_in}, $3::bytea[]) AS u(k, v, r) {upsert}"),
        delete=f"DELETE FROM {table} WHERE key = $1 RETURNING {live}",
        delete_many=(f"WITH gone AS (DELETE FROM {table} WHERE key = ANY($1::text[]) "
                     f"RETURNING expires_at) SELECT count(*) FROM gone WHERE {live}"),
        scan=scan,
    )


_EXPECTED_COLUMNS = {"key": "text", "value": "jsonb", "raw": "bytea",
                     "expires_at": "timestamp with time zone"}


# ---------------------------------------------------------------------------------- pools


class PoolTimeoutError(TimeoutError):
    """Every connection stayed busy for ``acquire_timeout`` seconds (back-pressure)."""


class _OwnPool:
    """``min_size``..``max_size`` connections made by the store. An idle one is taken without
    an await; a semaphore bounds the total and makes callers queue, for ``acquire_timeout``."""

    def __init__(self, connect: Callable[[], Awaitable[Connection]], min_size: int,
                 max_size: int, acquire_timeout: float) -> None:
        self._connect = connect
        self._min_size = min_size
        self._max_size = max_size
        self._acquire_timeout = acquire_timeout
        self._idle: list[Connection] = []
        self._open: set[Connection] = set()
        self._slots = asyncio.Semaphore(max_size)
        self._closed = False

    async def start(self) -> Connection:
        """Make ``min_size`` connections (at least one, returned checked out for setup)."""
        first = await self._new_connection()
        await self._slots.acquire()
        extra = await asyncio.gather(
            *(self._new_connection() for _ in range(self._min_size - 1)),
            return_exceptions=True)
        for result in extra:
            if isinstance(result, BaseException):
                raise result
            self._idle.append(result)
        return first

    async def _new_connection(self) -> Connection:
        connection = await self._connect()
        self._open.add(connection)
        return connection

    async def acquire(self) -> Connection:
        if self._slots.locked():
            try:
                async with asyncio.timeout(self._acquire_timeout):
                    await self._slots.acquire()
            except TimeoutError:
                raise PoolTimeoutError(
                    f"no connection became free within {self._acquire_timeout:g} s "
                    f"(max_pool_size={self._max_size}); raise max_pool_size or "
                    "acquire_timeout") from None
        else:
            await self._slots.acquire()
        try:
            while self._idle:
                connection = self._idle.pop()
                if not connection.is_closed():
                    return connection
                self._open.discard(connection)
            return await self._new_connection()
        except BaseException:
            self._slots.release()
            raise

    async def release(self, connection: Connection, error: BaseException | None) -> None:
        if isinstance(error, asyncio.CancelledError) and not self._closed:
            error = await _settle_after_cancel(connection, error)
        if not self._closed and (error is None or _still_usable(connection, error)):
            self._idle.append(connection)
        else:
            self._open.discard(connection)
            connection.terminate()
        self._slots.release()

    async def close(self) -> None:
        self._closed = True  # a connection still in use is terminated when it comes back
        open_connections, self._open = self._open, set()
        idle, self._idle = set(self._idle), []
        for connection in open_connections:
            if connection in idle:
                try:
                    await connection.close(timeout=2)
                except Exception:
                    connection.terminate()


class _CallerPool:
    """A caller's ``asyncpg.Pool``: connections are borrowed per operation, never closed."""

    def __init__(self, pool: Any, acquire_timeout: float) -> None:
        self._pool = pool
        self._acquire_timeout = acquire_timeout

    async def acquire(self) -> Connection:
        try:
            async with asyncio.timeout(self._acquire_timeout):
                return await self._pool.acquire()
        except TimeoutError:
            raise PoolTimeoutError(
                f"no connection of the pool passed in became free within "
                f"{self._acquire_timeout:g} s") from None

    async def release(self, connection: Connection, error: BaseException | None) -> None:
        await self._pool.release(connection)

    async def close(self) -> None:
        pass


async def _settle_after_cancel(connection: Connection,
                               error: BaseException) -> BaseException | None:
    """A cancelled statement may still run on the server and, left alone, commit after the
    caller's next statement on another connection (bringing back the value it overwrote).
    asyncpg asks the server to cancel it and reads its outcome; one ``SELECT 1`` waits for that
    (bounded, and shielded from a second cancellation), so the cancelled call returns only once
    the server is done with it. None when the connection is idle again and can be kept."""

    async def ping() -> BaseException | None:
        try:
            async with asyncio.timeout(_SETTLE_TIMEOUT):
                await connection.fetchval("SELECT 1")
        except Exception as exc:  # a server error (the cancel itself) keeps the connection
            return exc
        return error if connection.is_in_transaction() else None

    try:
        return await asyncio.shield(asyncio.ensure_future(ping()))
    except asyncio.CancelledError:
        return error  # cancelled again: stop waiting, drop the connection


def _still_usable(connection: Connection, error: BaseException) -> bool:
    """After an error the server reported, the connection is fine; after anything else
    (cancellation, a timeout, a broken socket) its state is unknown, so it is dropped."""
    return (isinstance(error, asyncpg.PostgresError)
            and not isinstance(error, asyncpg.PostgresConnectionError)
            and not connection.is_closed() and not connection.is_in_transaction())


def _encode_jsonb(value: bytes) -> bytes:
    return b"\x01" + value


def _decode_jsonb(data: bytes) -> bytes:
    return data[1:]


# ---------------------------------------------------------------------------------- store


class PostgreSQLStore(KVStore):
    """A namespace is a table in one PostgreSQL database; many processes may share it."""

    declared_options = (
        *SHARED, batch_size_option(1000),
        Whole("min_pool_size", 1, minimum=0), Whole("max_pool_size", 10, minimum=1),
        Duration("connect_timeout", 5.0), Duration("command_timeout", None),
        Duration("acquire_timeout", 10.0))

    def __init__(
        self,
        url: str | None = None,
        *,
        pool: Any = None,
        namespace: str | None = None,
        min_pool_size: int | None = None,
        max_pool_size: int | None = None,
        connect_timeout: float | None = None,
        command_timeout: float | None = None,
        acquire_timeout: float | None = None,
        durability: str | None = None,
        batch_size: int | None = None,
    ) -> None:
        if asyncpg is None:
            raise MissingDependencyError("asyncpg", "postgresql")
        if url is None and pool is None:
            raise ConfigError("PostgreSQLStore needs a postgresql:// URL or pool=")
        parsed = parse_store_url(url) if url is not None else None
        if parsed is not None and parsed.scheme not in schemes_of("postgresql"):
            raise ConfigError(f"{parsed.redacted!r} is not a postgresql:// URL")
        settings = read_options(self.declared_options, {
            "namespace": namespace, "min_pool_size": min_pool_size,
            "max_pool_size": max_pool_size, "connect_timeout": connect_timeout,
            "command_timeout": command_timeout, "acquire_timeout": acquire_timeout,
            "durability": durability, "batch_size": batch_size}, parsed, keep_unknown=True)
        super().__init__(namespace=settings["namespace"])
        self._url_shown = parsed.redacted if parsed is not None else None
        self.min_pool_size: int = settings["min_pool_size"]
        self.max_pool_size: int = settings["max_pool_size"]
        check_pool_sizes(self.min_pool_size, self.max_pool_size)
        self.connect_timeout: float = settings["connect_timeout"]
        self.command_timeout: float | None = settings["command_timeout"]
        self.acquire_timeout: float = settings["acquire_timeout"]
        self.durability: str = settings["durability"]
        self.scan_batch_size = settings["batch_size"]
        # What is left of the URL (sslmode, server settings, ...) is asyncpg's business.
        self._dsn = parsed.with_options_left() if parsed is not None else None
        self._caller_pool = pool
        self._secrets = parsed.secrets if parsed is not None else ()
        self._sql = _statements(self.namespace, with_codec=pool is None)
        self._pool: _OwnPool | _CallerPool | None = None

    @classmethod
    def from_url(cls, url: StoreURL, **options: Any) -> PostgreSQLStore:
        return cls(url.raw, **options)

    def __repr__(self) -> str:
        where = repr(self._url_shown) if self._url_shown is not None else "pool=<caller's>"
        return f"PostgreSQLStore({where}, namespace={self.namespace!r})"

    # ------------------------------------------------------------------ lifecycle

    async def _connect(self) -> Connection:
        async with asyncio.timeout(self.connect_timeout):
            try:
                connection = await asyncpg.connect(
                    self._dsn, timeout=self.connect_timeout, command_timeout=self.command_timeout)
            except asyncpg.UndefinedObjectError as exc:
                # An option neither we nor asyncpg took went to the server as a setting.
                setting = _UNKNOWN_SETTING.search(str(exc))
                if setting is None or self._dsn is None:
                    raise
                raise unknown_options([setting[1]], self._dsn) from None
            try:
                await connection.set_type_codec(
                    "jsonb", schema="pg_catalog", format="binary",
                    encoder=_encode_jsonb, decoder=_decode_jsonb)
            except BaseException:
                connection.terminate()
                raise
        return connection

    async def _open(self) -> None:
        pool: _OwnPool | _CallerPool
        if self._caller_pool is not None:
            pool = _CallerPool(self._caller_pool, self.acquire_timeout)
            connection = await pool.acquire()
        else:
            pool = _OwnPool(self._connect, self.min_pool_size, self.max_pool_size,
                            self.acquire_timeout)
            try:
                connection = await pool.start()
            except BaseException:
                await pool.close()
                raise
        error: BaseException | None = None
        try:
            if self.durability == "strict":
                await self._check_durability(connection)
            await self._ensure_table(connection)
        except BaseException as exc:
            error = exc
            raise
        finally:
            await pool.release(connection, error)
            if error is not None:
                await pool.close()
        self._pool = pool

    async def _check_durability(self, connection: Connection) -> None:
        """``durability=strict``: refuse a server that may acknowledge a commit it can lose."""
        commit, fsync = await connection.fetchrow(
            "SELECT current_setting('synchronous_commit'), current_setting('fsync')")
        if commit not in _STRICT_COMMIT:
            raise ConfigError(
                f"durability=strict needs synchronous_commit=on, but {self!r} has "
                f"synchronous_commit={commit}; set it to on (ALTER DATABASE/ROLE ... SET "
                "synchronous_commit = on) or use durability=normal")
        if fsync != "on":
            raise ConfigError(f"durability=strict needs fsync=on, but {self!r} has fsync={fsync}")

    async def _ensure_table(self, connection: Connection) -> None:
        """Create the table unless it exists; check it if it does. Concurrent openers take an
        advisory lock, since two CREATE TABLE IF NOT EXISTS can still collide in pg_type."""
        table = _quote_identifier(self.namespace)
        rows = await connection.fetch(self._sql.columns, table)
        if not rows:
            async with connection.transaction():
                await connection.execute(
                    "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                    f"kvsessions.create_table.{self.namespace}")
                await connection.execute(self._sql.create)
            rows = await connection.fetch(self._sql.columns, table)
        found = {name: (kind, collation) for name, kind, collation in rows}
        for name, kind in _EXPECTED_COLUMNS.items():
            if name not in found or found[name][0] != kind:
                raise ConfigError(
                    f"table {self.namespace!r} in {self!r} is not a kvsessions table "
                    f"(column {name} {kind} is missing); choose another namespace")
        if found["key"][1] != "C":
            raise ConfigError(
                f"table {self.namespace!r} has its key column in collation "
                f"{found['key'][1]!r}; kvsessions needs COLLATE \"C\" for byte order")

    async def _close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    # ------------------------------------------------------------------ running statements

    async def _run(self, method: str, sql: str, *args: Any) -> Any:
        """One statement on a pooled connection: one round trip."""
        pool = self._pool
        assert pool is not None
        connection = await pool.acquire()
        try:
            result = await getattr(connection, method)(sql, *args)
        except BaseException as exc:
            await pool.release(connection, exc)
            raise
        await pool.release(connection, None)
        return result

    # ------------------------------------------------------------------ hooks

    async def _get(self, key: str) -> bytes | None:
        row = await self._run("fetchrow", self._sql.get, key)
        if row is None:
            return None
        value, raw = row
        return value if raw is None else raw  # type: ignore[no-any-return]

    async def _get_many(self, keys: list[str]) -> list[bytes | None]:
        rows = await self._run("fetch", self._sql.get_many, list(dict.fromkeys(keys)))
        found = {key: (value if raw is None else raw) for key, value, raw in rows}
        return [found.get(key) for key in keys]

    async def _put(self, key: str, value: bytes, ttl: float | None) -> None:
        document, raw = _split(value)
        await self._run("execute", self._sql.put, key, document, raw, ttl)

    async def _put_if_absent(self, key: str, value: bytes, ttl: float | None) -> bool:
        document, raw = _split(value)
        stored = await self._run("fetchval", self._sql.put_if_absent, key, document, raw, ttl)
        return stored is True

    @functools.cached_property
    def _cas_sql(self) -> tuple[str, str]:
        """(update, delete) statements of ``compare_and_set``; each matches the row only while
        its live value equals the expected document: jsonb equality, plus the exact bytes for a
        row that keeps them in ``raw`` (see ``jsonb_loses``). Under READ COMMITTED a
        concurrent writer of the row makes the statement wait and re-check its WHERE on the
        new row version, so of many concurrent calls from one value exactly one matches."""
        table = _quote_identifier(self.namespace)
        if self._caller_pool is None:
            old_value, new_value = "$2::jsonb", "$4::jsonb"
        else:
            old_value = "convert_from($2::bytea, 'UTF8')::jsonb"
            new_value = "convert_from($4::bytea, 'UTF8')::jsonb"
        matches = (f"key = $1 AND (expires_at IS NULL OR expires_at > now()) "
                   f"AND value = {old_value} AND (raw IS NULL OR raw = $3::bytea)")
        update = (f"UPDATE {table} SET value = {new_value}, raw = $5::bytea, "
                  f"expires_at = now() + $6::float8 * interval '1 second' "
                  f"WHERE {matches} RETURNING true")
        delete = f"DELETE FROM {table} WHERE {matches} RETURNING true"
        return update, delete

    async def _compare_and_set(
        self, key: str, expected: bytes | None, new: bytes | None, ttl: float | None
    ) -> bool:
        if expected is None:
            if new is None:
                return await self._get(key) is None
            return await self._put_if_absent(key, new, ttl)
        old_document, old_raw = _split(expected)
        update, delete = self._cas_sql
        if new is None:
            found = await self._run("fetchval", delete, key, old_document, old_raw)
        else:
            new_document, new_raw = _split(new)
            found = await self._run("fetchval", update, key, old_document, old_raw,
                                    new_document, new_raw, ttl)
        return found is True

    async def _put_many(self, items: list[tuple[str, bytes]], ttl: float | None) -> None:
        size = self.scan_batch_size
        chunks = [_columns(items[start:start + size]) for start in range(0, len(items), size)]
        if len(chunks) == 1:
            await self._run("execute", self._sql.put_many, *chunks[0], ttl)
            return
        pool = self._pool
        assert pool is not None
        connection = await pool.acquire()
        error: BaseException | None = None
        try:
            async with connection.transaction():
                for keys, documents, raws in chunks:
                    await connection.execute(self._sql.put_many, keys, documents, raws, ttl)
        except BaseException as exc:
            error = exc
            raise
        finally:
            await pool.release(connection, error)

    async def _delete(self, key: str) -> bool:
        return await self._run("fetchval", self._sql.delete, key) is True

    async def _delete_many(self, keys: list[str]) -> int:
        count = await self._run("fetchval", self._sql.delete_many, keys)
        return int(count)

    async def _scan_page(
        self, key_range: KeyRange, reverse: bool, limit: int
    ) -> tuple[list[tuple[str, bytes]], str | None]:
        bounded = key_range.upper is not None
        sql = self._sql.scan[reverse, key_range.lower_inclusive, bounded]
        args: tuple[Any, ...] = (key_range.lower, limit)
        if bounded:
            args += (key_range.upper,)
        rows = await self._run("fetch", sql, *args)
        return self._page([(key, value if raw is None else raw) for key, value, raw in rows],
                          limit)

    # ------------------------------------------------------------------ errors

    def _classify_error(self, exc: Exception) -> type[KVSessionsError] | None:
        if isinstance(exc, PoolTimeoutError | OSError | TimeoutError):
            return StoreUnavailableError
        if asyncpg is not None:
            unavailable = (
                asyncpg.PostgresConnectionError,  # class 08, and a connection that went away
                asyncpg.TooManyConnectionsError,
                asyncpg.CannotConnectNowError,
                asyncpg.AdminShutdownError,
                asyncpg.CrashShutdownError,
                asyncpg.InvalidAuthorizationSpecificationError,  # bad user or password
                asyncpg.InvalidCatalogNameError,  # no such database
            )
            if isinstance(exc, unavailable):
                return StoreUnavailableError
            if isinstance(exc, asyncpg.InterfaceError) and "closed" in str(exc):
                return StoreUnavailableError
            if isinstance(exc, asyncpg.InternalClientError):
                # asyncpg's protocol state after the server dropped an idle connection.
                return StoreUnavailableError
        return StoreError


def _columns(items: Sequence[tuple[str, bytes]]) -> tuple[list[str], list[bytes],
                                                         list[bytes | None]]:
    keys: list[str] = []
    documents: list[bytes] = []
    raws: list[bytes | None] = []
    for key, value in items:
        document, raw = _split(value)
        keys.append(key)
        documents.append(document)
        raws.append(raw)
    return keys, documents, raws
