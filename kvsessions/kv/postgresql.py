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
* Documents go into JSONB without a second serialisation (``postgresql_jsonb``). Documents
  JSONB cannot keep exactly (see ``jsonb_loses``) also keep their exact bytes in ``raw``;
  ``value`` then holds a queryable copy (NULs as U+FFFD) and reads return ``raw``. Every other
  document has ``raw`` NULL.
* The table's layout is versioned (``table_layouts``): ``open()`` upgrades a table made by an
  older release, under an advisory lock, and only reads when the table is up to date.
* Expiry is on the server's clock (``now()``), for writers and readers alike, so clients with
  skewed clocks agree. Expired rows are filtered in every read and removed by later writes;
  ``DELETE FROM <table> WHERE expires_at <= now()`` purges the rest.
* Every operation is one statement, so one round trip: ``put_if_absent`` is an upsert whose
  update only fires on an expired row, ``put_many`` one ``unnest`` insert (chunks of
  ``batch_size`` in one transaction above that), ``delete_many`` one ``DELETE ... = ANY``.
* The store keeps its own small pool of asyncpg connections (``postgresql_pool``). A caller's
  ``asyncpg.Pool`` (``pool=``) is used as it is and never closed; its connections are not given
  our codec, so queries convert with ``jsonb_send``/``convert_from``.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kvsessions.errors import (
    ConfigError,
    EventLoopError,
    KVSessionsError,
    MissingDependencyError,
    StoreError,
    StoreNotFoundError,
    StoreUnavailableError,
)
from kvsessions.kv.base import KeyRange, KVStore
from kvsessions.kv.loops import PerLoop, describe_loop
from kvsessions.kv.options import (
    PARTITIONS,
    SHARED,
    Duration,
    Whole,
    batch_size_option,
    check_pool_sizes,
    read_options,
    unknown_options,
)
from kvsessions.kv.postgresql_jsonb import decode_jsonb, encode_jsonb, jsonb_loses
from kvsessions.kv.postgresql_jsonb import split_exact as _split
from kvsessions.kv.postgresql_pool import CallerPool, Connection, OwnPool, PoolTimeoutError
from kvsessions.kv.postgresql_text import PostgreSQLTextIndex
from kvsessions.kv.registry import schemes_of
from kvsessions.kv.table_layouts import TableLayouts
from kvsessions.kv.table_layouts import quote_identifier as _quote_identifier
from kvsessions.kv.text_search import Accept, TextHit, TextIndex, ranked_pages
from kvsessions.kv.values import prefix_upper_bound
from kvsessions.urls import StoreURL, parse_store_url

try:
    import asyncpg
except ImportError:
    asyncpg = None

__all__ = ["PARTITION_COLUMN", "PostgreSQLStore", "jsonb_loses", "partitioned_table_sql"]

#: Settings of the store's own connections. Every statement reads one key, a list of keys or
#: a key range in key order, which the primary key's index serves; with bitmap scans the
#: planner, misled by statistics older than the table's growth, read a whole prefix and
#: sorted it to return the first rows of a scan (a listing: every index entry, O(store)).
#: Without seq scans, a prepared ``key = ANY($1)`` whose generic plan was made while the table
#: was small (a sequential read, then cheapest) keeps to the index after the table grew.
#: So a generic plan is as good as one made for the values, and each statement keeps the one
#: it made: left to choose, PostgreSQL planned every ``compare_and_set_with`` and every scan
#: (``LIMIT $2``) again at every call, as their generic plans looked dearer (planning took
#: twice as long as running an append's statement; pg_prepared_statements: 0 generic plans).
_SESSION_SETTINGS = {"enable_bitmapscan": "off", "enable_seqscan": "off",
                     "plan_cache_mode": "force_generic_plan"}
#: synchronous_commit values under which a commit waits for the local WAL flush (and standbys).
_STRICT_COMMIT = frozenset({"on", "remote_apply"})
_UNKNOWN_SETTING = re.compile(r'unrecognized configuration parameter "([^"]*)"')

# ---------------------------------------------------------------------------------- SQL


#: The table's layouts, oldest first (see ``table_layouts``). Append only.
LAYOUTS = TableLayouts([
    (  # 1: key order by bytes ("C"), JSONB values, exact bytes where JSONB would change them
        'CREATE TABLE IF NOT EXISTS {table} (key text COLLATE "C" PRIMARY KEY, '
        "value jsonb NOT NULL, raw bytea, expires_at timestamptz)",
    ),
], dialect="postgresql")


@dataclass(frozen=True, slots=True)
class _Statements:
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
    #: get_and_last[bounded]: the row of key $1 (tagged 0) and the last live row from $2 up
    #: to $3 (tagged 1), in one statement.
    get_and_last: dict[bool, str]
    #: The condition naming the row of key $1.
    one_key: str
    #: A row's value columns (value, raw), as every read selects them.
    read: str
    #: The columns an insert names, the expression that fills the partition column from the
    #: key in ``{key}`` ('' when the table is not partitioned), and the ON CONFLICT target.
    insert_columns: str
    partition_of: str
    conflict: str


#: The partition column of a hash-partitioned table: ``kvsessions.kv.partitions``'s rule in SQL.
PARTITION_COLUMN = "key_partition"
_PARTITION_OF = "split_part({key}, ':', 2)"


def partitioned_table_sql(table_name: str, partitions: int) -> list[str]:
    """A namespace table ``PARTITION BY HASH`` on the partition column, with ``partitions``
    partitions named ``"<namespace>-p<i>"`` (a ``-``, which no namespace has). The primary key
    holds the partition column, as PostgreSQL (and Citus) want of a partitioned table's unique
    keys; the key alone is still unique, as the partition is a function of the key."""
    table = _quote_identifier(table_name)
    statements = [
        f'CREATE TABLE {table} (key text COLLATE "C" NOT NULL, value jsonb NOT NULL, '
        f'raw bytea, expires_at timestamptz, {PARTITION_COLUMN} text COLLATE "C" NOT NULL, '
        f"PRIMARY KEY (key, {PARTITION_COLUMN})) PARTITION BY HASH ({PARTITION_COLUMN})"]
    statements += [
        f"CREATE TABLE {_quote_identifier(f'{table_name}-p{i}')} PARTITION OF {table} "
        f"FOR VALUES WITH (MODULUS {partitions}, REMAINDER {i})" for i in range(partitions)]
    return statements


def _statements(table_name: str, *, with_codec: bool, partitioned: bool = False) -> _Statements:
    """Every statement the store runs. ``with_codec``: our connections carry the binary jsonb
    codec, so jsonb goes in and out as bytes; a caller's pool converts on the server instead.
    ``partitioned``: the table is partitioned on ``PARTITION_COLUMN``, which inserts fill and
    single-key statements name (so PostgreSQL, or Citus, goes to one partition)."""
    table = _quote_identifier(table_name)
    columns, extra, conflict, one_key = "(key, value, raw, expires_at)", "", "(key)", "key = $1"
    if partitioned:
        columns = f"(key, value, raw, expires_at, {PARTITION_COLUMN})"
        extra = ", " + _PARTITION_OF.format(key="$1")
        conflict = f"(key, {PARTITION_COLUMN})"
        one_key = f"key = $1 AND {PARTITION_COLUMN} = {_PARTITION_OF.format(key='$1')}"
    if with_codec:
        value_in, values_in, value_out = "$2::jsonb", "$2::jsonb[]", "value"
        unnest_value = "v"
    else:
        value_in = "convert_from($2::bytea, 'UTF8')::jsonb"
        values_in, value_out = "$2::bytea[]", "substring(jsonb_send(value) from 2)"
        unnest_value = "convert_from(v, 'UTF8')::jsonb"
    live = "(expires_at IS NULL OR expires_at > now())"
    deadline = "now() + $4::float8 * interval '1 second'"
    upsert = (f"ON CONFLICT {conflict} DO UPDATE SET value = EXCLUDED.value, "
              "raw = EXCLUDED.raw, expires_at = EXCLUDED.expires_at")
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
    # LIMIT 1, not a parameter: with LIMIT $n the generic plan looks dearer than the custom
    # ones, so PostgreSQL plans the statement again at every call.
    get_and_last = {bounded: (
        f"SELECT 0, NULL, {read} FROM {table} WHERE {one_key} AND {live} UNION ALL "
        f"(SELECT 1, key, {read} FROM {table} WHERE key >= $2"
        f"{' AND key < $3' if bounded else ''} AND {live} ORDER BY key DESC LIMIT 1)")
        for bounded in (False, True)}
    return _Statements(
        columns=("SELECT a.attname, format_type(a.atttypid, a.atttypmod), c.collname "
                 "FROM pg_attribute a LEFT JOIN pg_collation c ON c.oid = a.attcollation "
                 "WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped"),
        get=f"SELECT {read} FROM {table} WHERE {one_key} AND {live}",
        get_many=f"SELECT key, {read} FROM {table} WHERE key = ANY($1::text[]) AND {live}",
        put=(f"INSERT INTO {table} {columns} "
             f"VALUES ($1, {value_in}, $3::bytea, {deadline}{extra}) {upsert}"),
        put_if_absent=(f"INSERT INTO {table} AS t {columns} "
                       f"VALUES ($1, {value_in}, $3::bytea, {deadline}{extra}) {upsert} "
                       "WHERE t.expires_at <= now() RETURNING true"),
        put_many=(f"INSERT INTO {table} {columns} "
                  f"SELECT k, {unnest_value}, r, {deadline}"
                  f"{extra.replace('$1', 'k')} "
                  f"FROM unnest($1::text[], {values_in}, $3::bytea[]) AS u(k, v, r) {upsert}"),
        delete=f"DELETE FROM {table} WHERE {one_key} RETURNING {live}",
        delete_many=(f"WITH gone AS (DELETE FROM {table} WHERE key = ANY($1::text[]) "
                     f"RETURNING expires_at) SELECT count(*) FROM gone WHERE {live}"),
        scan=scan,
        get_and_last=get_and_last,
        one_key=one_key,
        read=read,
        insert_columns=columns,
        partition_of=", " + _PARTITION_OF if partitioned else "",
        conflict=conflict,
    )


_EXPECTED_COLUMNS = {"key": "text", "value": "jsonb", "raw": "bytea",
                     "expires_at": "timestamp with time zone"}

#: What ``pg_class.relkind`` says a relation is, for a namespace whose name is taken.
_RELATION_KINDS = {"i": "an index", "I": "a partitioned index", "S": "a sequence",
                   "v": "a view", "m": "a materialized view", "f": "a foreign table",
                   "c": "a composite type", "t": "a TOAST table"}


# ---------------------------------------------------------------------------------- store


class PostgreSQLStore(KVStore):
    """A namespace is a table in one PostgreSQL database; many processes may share it."""

    declared_options = (
        *SHARED, batch_size_option(1000),
        Whole("min_pool_size", 1, minimum=0), Whole("max_pool_size", 10, minimum=1),
        Duration("connect_timeout", 5.0), Duration("command_timeout", None),
        Duration("acquire_timeout", 10.0), PARTITIONS)

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
        partitions: int | None = None,
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
            "durability": durability, "batch_size": batch_size, "partitions": partitions},
            parsed, keep_unknown=True)
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
        #: Hash partitions to create the table with (None: a plain table); see docs/stores.md.
        self.partitions: int | None = settings["partitions"]
        # What is left of the URL (sslmode, server settings, ...) is asyncpg's business.
        self._dsn = parsed.with_options_left() if parsed is not None else None
        self._caller_pool = pool
        self._secrets = parsed.secrets if parsed is not None else ()
        self._sql = _statements(self.namespace, with_codec=pool is None)
        self._per_loop = self._pools = PerLoop(self._start_pool, self._stop_pool)
        self._text_indexes: dict[TextIndex, PostgreSQLTextIndex] = {}

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
                    self._dsn, timeout=self.connect_timeout, command_timeout=self.command_timeout,
                    server_settings=_SESSION_SETTINGS)
            except asyncpg.UndefinedObjectError as exc:
                # An option neither we nor asyncpg took went to the server as a setting.
                setting = _UNKNOWN_SETTING.search(str(exc))
                if setting is None or self._dsn is None:
                    raise
                raise unknown_options([setting[1]], self._dsn) from None
            try:
                await connection.set_type_codec(
                    "jsonb", schema="pg_catalog", format="binary",
                    encoder=encode_jsonb, decoder=decode_jsonb)
            except BaseException:
                connection.terminate()
                raise
        return connection

    async def _open(self) -> None:
        pool = await self._pools.get()
        connection = await pool.acquire()
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
                await self._pools.close()

    async def _start_pool(self) -> OwnPool | CallerPool:
        """The calling event loop's pool: ours, started here, or the caller's."""
        if self._caller_pool is not None:
            first_loop = self._pools.first_loop_if_other()
            if first_loop is not None:
                raise EventLoopError(
                    f"{self!r} was given a pool that belongs to {first_loop}; "
                    f"it cannot serve {describe_loop(asyncio.get_running_loop())}: give each "
                    "event loop its own pool, or pass a URL instead")
            return CallerPool(self._caller_pool, self.acquire_timeout)
        pool = OwnPool(self._connect, self.min_pool_size, self.max_pool_size,
                       self.acquire_timeout)
        try:
            connection = await pool.start()
            await pool.release(connection, None)
        except BaseException:
            await pool.close()
            raise
        return pool

    @staticmethod
    async def _stop_pool(pool: OwnPool | CallerPool) -> None:
        await pool.close()

    @property
    def _pool(self) -> OwnPool | CallerPool:
        """The calling event loop's pool (``_ready`` made it)."""
        return self._pools.current()

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
        """Bring the table to the newest layout, then use the statements of its kind (plain
        or hash-partitioned)."""
        await self._ensure_layout(connection)
        partitioned = bool(await connection.fetchval(
            "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass($1) "
            "AND attname = $2 AND NOT attisdropped)",
            _quote_identifier(self.namespace), PARTITION_COLUMN))
        if self.partitions is not None and not partitioned:
            raise ConfigError(
                f"partitions={self.partitions} asks for a hash-partitioned table, but table "
                f"{self.namespace!r} in {self!r} exists unpartitioned; copy it into a new "
                "namespace opened with partitions (kvsessions migrate)")
        self._sql = _statements(self.namespace, with_codec=self._caller_pool is None,
                                partitioned=partitioned)
        self.__dict__.pop("_cas_sql", None)

    async def _ensure_layout(self, connection: Connection) -> None:
        """When the table is up to date this only reads; else the steps run in one
        transaction under one advisory lock (two CREATE TABLE IF NOT EXISTS at once can still
        collide in pg_type), the version read again under it. A missing table is created
        partitioned first when ``partitions`` asks; the steps then find it made."""
        if await self._layout_version(connection) == LAYOUTS.current:
            return
        if not self.create_missing and not await connection.fetchval(
                "SELECT to_regclass($1) IS NOT NULL", _quote_identifier(self.namespace)):
            raise StoreNotFoundError(f"no kvsessions store at {self!r}: table "
                                     f"{self.namespace!r} does not exist; nothing was created")
        try:
            async with connection.transaction():
                await connection.execute(
                    "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", "kvsessions.layouts")
                await connection.execute(LAYOUTS.create_sql)
                version = await self._layout_version(connection)
                if version == 0 and self.partitions is not None and not await \
                        connection.fetchval("SELECT to_regclass($1) IS NOT NULL",
                                            _quote_identifier(self.namespace)):
                    for sql in partitioned_table_sql(self.namespace, self.partitions):
                        await connection.execute(sql)
                for sql in LAYOUTS.pending(version, name=self.namespace, owner=repr(self)):
                    await connection.execute(sql)
                if version == 0:  # a table from before versions, or someone else's
                    await self._check_columns(connection)
                if version != LAYOUTS.current:
                    await connection.execute(LAYOUTS.record_sql, self.namespace,
                                             LAYOUTS.current)
        except asyncpg.InsufficientPrivilegeError:
            # A role that may not create tables (PostgreSQL 15's default on schema public)
            # uses a table made before versions, which is the first layout, as it is; a
            # table that needs a step fails with the permission error.
            table = _quote_identifier(self.namespace)
            if LAYOUTS.current != 1 or not await connection.fetchval(
                    "SELECT to_regclass($1) IS NOT NULL", table):
                raise
            await self._check_columns(connection)

    async def _layout_version(self, connection: Connection) -> int:
        try:
            version = await connection.fetchval(
                LAYOUTS.read_sql, *LAYOUTS.read_parameters(self.namespace))
        except (asyncpg.UndefinedTableError, asyncpg.InsufficientPrivilegeError):
            return 0  # no layouts table yet, or not ours to read: the upgrade decides
        return 0 if version is None else int(version)

    async def _check_columns(self, connection: Connection) -> None:
        """A table made before layout versions must be a kvsessions table with byte order."""
        await self._check_is_table(connection)
        rows = await connection.fetch(self._sql.columns, _quote_identifier(self.namespace))
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

    async def _check_is_table(self, connection: Connection) -> None:
        """The namespace's name may be taken by something that is not a table: most often
        the primary key index PostgreSQL names ``<table>_pkey`` for the namespace ``<table>``."""
        row = await connection.fetchrow(
            "SELECT c.relkind::text AS relkind, owner.relname FROM pg_class c "
            "LEFT JOIN pg_index i ON i.indexrelid = c.oid "
            "LEFT JOIN pg_class owner ON owner.oid = i.indrelid "
            "WHERE c.oid = to_regclass($1)", _quote_identifier(self.namespace))
        if row is None or row["relkind"] in ("r", "p"):
            return
        what = _RELATION_KINDS.get(row["relkind"], "not a table")
        if row["relname"] is not None:
            what = f"{what} of table {row['relname']!r}"
        raise ConfigError(f"namespace {self.namespace!r} in {self!r} names {what}, not a "
                          "table; choose another namespace")

    async def _close(self) -> None:
        await self._pools.close()

    # ------------------------------------------------------------------ running statements

    async def _run(self, method: str, sql: str, *args: Any) -> Any:
        """One statement on a pooled connection: one round trip."""
        pool = self._pool
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

    async def _get_and_last(self, key: str, key_range: KeyRange
                            ) -> tuple[bytes | None, tuple[str, bytes] | None]:
        bounded = key_range.upper is not None
        args: tuple[Any, ...] = (key, key_range.lower)
        if bounded:
            args += (key_range.upper,)
        found: bytes | None = None
        last: tuple[str, bytes] | None = None
        for tag, other, value, raw in await self._run("fetch", self._sql.get_and_last[bounded],
                                                      *args):
            if tag == 0:
                found = value if raw is None else raw
            else:
                last = (other, value if raw is None else raw)
        return found, last

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
        matches = (f"{self._sql.one_key} AND (expires_at IS NULL OR expires_at > now()) "
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

    _atomic_compare_and_set_with = True

    async def _compare_and_set_with(self, key: str, expected: bytes | None,
                                    new: bytes | None, create: list[tuple[str, bytes]],
                                    put: list[tuple[str, bytes]], delete: list[str],
                                    swap: list[tuple[str, bytes, bytes | None]]) -> bool:
        """One statement, so one round trip and one transaction: the compare-and-set as a
        data-modifying CTE, and the other writes conditional on its row."""
        args: list[Any] = [key]
        if expected is not None:
            args += _split(expected)
        if new is not None:
            args += _split(new)
        if create:
            args += _columns(create)
        args += [*_columns(put), delete]
        changed = [(other, read, value) for other, read, value in swap if value is not None]
        removed = [(other, read) for other, read, value in swap if value is None]
        if changed:
            args += [*_columns([(other, read) for other, read, _ in changed]),
                     *_columns([(other, value) for other, _, value in changed])[1:]]
        if removed:
            args += _columns(removed)
        sql = self._cas_with_sql[expected is None, new is None, bool(create), bool(changed),
                                 bool(removed)]
        try:
            return await self._run("fetchval", sql, *args) is True
        except asyncpg.DivisionByZeroError:
            return False  # a key to create was taken meanwhile: the statement undid it all

    @functools.cached_property
    def _cas_with_sql(self) -> dict[tuple[bool, bool, bool, bool, bool], str]:
        """The statements of ``compare_and_set_with`` by (expected is None, new is None, keys
        to create, other keys to rewrite, other keys to delete: each a CTE only where needed,
        as PostgreSQL plans the whole statement again at every call, CTEs it does not need
        included). Keys to create must all be absent; should one be created by someone else
        between that check and the insert (no lock covers an absent row), or a key to swap
        hold another value (checked after the head, so locks are taken head first, as by
        every other statement that locks a head and other rows), the final SELECT divides
        by zero, which rolls the whole statement back."""
        table = _quote_identifier(self.namespace)
        sql = self._sql  # a partitioned table: inserts fill its column, conflicts name it
        columns, partition_of = sql.insert_columns, sql.partition_of
        live = "(expires_at IS NULL OR expires_at > now())"
        upsert = (f"ON CONFLICT {sql.conflict} DO UPDATE SET value = EXCLUDED.value, "
                  "raw = EXCLUDED.raw, expires_at = EXCLUDED.expires_at")

        def document(n: int, array: str = "") -> str:
            if self._caller_pool is None:
                return f"${n}::jsonb{array}"
            return f"convert_from(${n}::bytea, 'UTF8')::jsonb" if not array else f"${n}::bytea[]"

        def as_jsonb(column: str) -> str:
            return column if self._caller_pool is None else f"convert_from({column}, 'UTF8')::jsonb"

        values_out = as_jsonb("v")

        def rows(n: int) -> str:
            return (f"SELECT k, {values_out}, r, NULL::timestamptz"
                    f"{partition_of.format(key='k')} FROM unnest(${n}::text[], "
                    f"{document(n + 1, '[]')}, ${n + 2}::bytea[]) AS u(k, v, r)")

        matches = (f"{sql.one_key} AND {live} AND value = {document(2)} "
                   "AND (raw IS NULL OR raw = $3::bytea)")
        swaps = {
            (False, False): (f"UPDATE {table} SET value = {document(4)}, raw = $5::bytea, "
                             f"expires_at = NULL WHERE {matches}@free RETURNING true", 6),
            (False, True): (f"DELETE FROM {table} WHERE {matches}@free RETURNING true", 4),
            (True, False): (f"INSERT INTO {table} AS t {columns} SELECT "
                            f"$1, {document(2)}, $3::bytea, NULL"
                            f"{partition_of.format(key='$1')} WHERE true@free {upsert} "
                            "WHERE t.expires_at <= now() RETURNING true", 4),
            (True, True): (f"SELECT true WHERE NOT EXISTS (SELECT 1 FROM {table} "
                           f"WHERE {sql.one_key} AND {live})@free", 2),
        }
        same = (f"t.key = u.k AND t.{PARTITION_COLUMN} = {_PARTITION_OF.format(key='u.k')}"
                if sql.partition_of else "t.key = u.k")
        read = (f"{same} AND {live} AND t.value = {as_jsonb('u.v')} "
                "AND (t.raw IS NULL OR t.raw = u.r) AND EXISTS (SELECT 1 FROM swap)")

        def made(n: int, creating: bool) -> tuple[str, str, str, int]:
            """The keys to create ($n.. $n + 2): the swap's condition that they are absent,
            their insert, its check; and the next parameter's number."""
            if not creating:
                return "", "", "", n
            free = (f" AND NOT EXISTS (SELECT 1 FROM {table} WHERE key = ANY(${n}::text[]) "
                    f"AND {live})")
            return (free, f"made AS (INSERT INTO {table} AS t {columns} {rows(n)} "
                          f"WHERE EXISTS (SELECT 1 FROM swap) {upsert} "
                          "WHERE t.expires_at <= now() RETURNING 1), ",
                    f" AND (SELECT count(*) FROM made) = cardinality(${n}::text[])", n + 3)

        def moved(n: int, changing: bool, removing: bool) -> tuple[str, str]:
            """The other keys' compare-and-sets, after the head's: those rewritten (keys,
            values read, new values: $n.. $n + 4), then those deleted (keys, values read)."""
            ctes, check = "", ""
            if changing:
                ctes += (f", changed AS (UPDATE {table} AS t SET value = {as_jsonb('u.n')}, "
                         f"raw = u.nr, expires_at = NULL FROM unnest(${n}::text[], "
                         f"{document(n + 1, '[]')}, ${n + 2}::bytea[], {document(n + 3, '[]')}, "
                         f"${n + 4}::bytea[]) AS u(k, v, r, n, nr) WHERE {read} RETURNING 1)")
                check += f" AND (SELECT count(*) FROM changed) = cardinality(${n}::text[])"
                n += 5
            if removing:
                ctes += (f", removed AS (DELETE FROM {table} AS t USING unnest(${n}::text[], "
                         f"{document(n + 1, '[]')}, ${n + 2}::bytea[]) AS u(k, v, r) "
                         f"WHERE {read} RETURNING 1)")
                check += f" AND (SELECT count(*) FROM removed) = cardinality(${n}::text[])"
            return ctes, check

        statements = {}
        for (no_expected, no_new), (swap, n) in swaps.items():
            for creating, changing, removing in itertools.product((False, True), repeat=3):
                free, insert, made_check, put = made(n, creating)
                ctes, check = moved(put + 4, changing, removing)
                statements[no_expected, no_new, creating, changing, removing] = (
                    f"WITH swap AS ({swap.replace('@free', free)}), {insert}"
                    f"put AS (INSERT INTO {table} {columns} {rows(put)} "
                    f"WHERE EXISTS (SELECT 1 FROM swap) {upsert}), "
                    f"gone AS (DELETE FROM {table} WHERE key = ANY(${put + 3}::text[]) "
                    f"AND EXISTS (SELECT 1 FROM swap)){ctes} "
                    "SELECT CASE WHEN NOT EXISTS (SELECT 1 FROM swap) THEN false "
                    f"WHEN true{made_check}{check} THEN true "
                    "ELSE 1 / ((SELECT count(*) FROM swap) * 0) = 0 END")
        return statements

    async def _put_many(self, items: list[tuple[str, bytes]], ttl: float | None) -> None:
        size = self.scan_batch_size
        chunks = [_columns(items[start:start + size]) for start in range(0, len(items), size)]
        if len(chunks) == 1:
            await self._run("execute", self._sql.put_many, *chunks[0], ttl)
            return
        pool = self._pool
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

    # ------------------------------------------------------------------ text search

    text_search = "postgresql"

    async def _search_text(self, index: TextIndex, terms: list[str], within: str, limit: int,
                           accept: Accept | None) -> list[TextHit]:
        """Full-text search on a GIN index made on first use (``postgresql_text``)."""
        sql = self._text_indexes.get(index)
        if sql is None:
            sql = PostgreSQLTextIndex(self.namespace, index, self._sql.read)
            await self._run("execute", sql.create)
            self._text_indexes[index] = sql
        query, upper = " ".join(terms), prefix_upper_bound(within)

        async def page(size: int, offset: int) -> list[TextHit]:
            rows = await self._with_bitmap_scans(sql.search, query, within, upper, size, offset)
            return [TextHit(key, value if raw is None else raw, float(score))
                    for key, value, raw, score in rows]

        return await ranked_pages(page, limit, accept)

    async def _with_bitmap_scans(self, sql: str, *args: Any) -> list[Any]:
        """``sql``'s rows with bitmap scans allowed for it alone: a GIN index is read only by
        a bitmap scan, which the store's connections turn off for every other statement
        (``_SESSION_SETTINGS``); without it a search read the whole prefix by the key."""
        pool = self._pool
        connection = await pool.acquire()
        error: BaseException | None = None
        try:
            async with connection.transaction():
                await connection.execute("SET LOCAL enable_bitmapscan = on")
                return await connection.fetch(sql, *args)  # type: ignore[no-any-return]
        except BaseException as exc:
            error = exc
            raise
        finally:
            await pool.release(connection, error)

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
