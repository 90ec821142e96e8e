"""Frozen copy of kvsessions/kv/redis.py as released before partitions (commit ce56121): it
writes the one-hash-tag layout that tests/test_layout_upgrade.py upgrades. Do not edit.

Redis and Redis Cluster: one string per document plus a sorted set that keeps the keys in order.

Layout of a namespace ``ns`` (every name carries the hash tag ``{ns}``, so in a cluster the
values and their index live in one slot and every write below is atomic there too)::

    kvs:{ns}:v:<key>   the document (a string; native PX expiry for ttl)
    kvs:{ns}:idx       sorted set of every key, all scores 0: ZRANGEBYLEX gives byte order
    kvs:{ns}:exp       sorted set key -> expiry (ms), only for keys written with a ttl

A value and its index member are written together (a Lua script, or MULTI/EXEC for
``put_many``), so scans are ordered and pageable without KEYS, SCAN or a client-side sort.
Redis expires values by itself; the index learns of it in two places, both through a script
that removes a member only if its value is really gone (so a concurrent re-put stays indexed):
a scan page drops and cleans members whose value is missing, and each write with a ttl sweeps
a few index members whose expiry has passed, so the index does not grow with dead keys.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Literal

from kvsessions.errors import (
    ConfigError,
    KVSessionsError,
    MissingDependencyError,
    StoreError,
    StoreUnavailableError,
)
from kvsessions.kv.base import KeyRange, KVStore, outlive_cancellation
from kvsessions.kv.options import (
    SHARED,
    Duration,
    Flag,
    Text,
    Whole,
    batch_size_option,
    read_options,
)
from kvsessions.urls import StoreURL, parse_store_url, redact_url
from tests.legacy import release_redis_scripts as scripts

try:
    import redis.exceptions as redis_errors
    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster
    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialWithJitterBackoff
except ImportError:  # pragma: no cover - exercised by a test that hides the package
    redis_errors = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from redis.asyncio import Redis as RedisClient
    from redis.asyncio.cluster import RedisCluster as RedisClusterClient

    AnyRedis = RedisClient | RedisClusterClient

__all__ = ["RedisStore"]

Durability = Literal["normal", "strict"]
#: TLS options of the URL, passed to redis-py as they are (the last is a flag).
_SSL_OPTIONS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs",
                "ssl_check_hostname")
#: Commands in flight at once (and connections per server): redis-py's asyncio pools raise
#: instead of waiting when they run out, so the store queues its callers itself.
_DEFAULT_MAX_CONNECTIONS = 64
def _require_driver() -> None:
    if redis_errors is None:
        raise MissingDependencyError("redis", "redis")


class RedisStore(KVStore):
    """Documents in Redis or Redis Cluster, ordered by a sorted-set index (see module doc)."""

    declared_options = (
        *SHARED, batch_size_option(1000),
        Duration("socket_timeout", 5.0), Duration("connect_timeout", 5.0),
        Duration("acquire_timeout", 10.0),  # seconds a call waits for a free connection slot
        Whole("max_connections", None, minimum=1), Flag("cluster", False),
        *(Text(name, None) for name in _SSL_OPTIONS[:-1]), Flag(_SSL_OPTIONS[-1], None))

    def __init__(
        self,
        url: str | StoreURL | None = None,
        *,
        client: AnyRedis | None = None,
        namespace: str | None = None,
        socket_timeout: float | None = None,
        connect_timeout: float | None = None,
        max_connections: int | None = None,
        acquire_timeout: float | None = None,
        durability: Durability | None = None,
        batch_size: int | None = None,
        cluster: bool | None = None,
    ) -> None:
        _require_driver()
        parsed = parse_store_url(url) if isinstance(url, str) else url
        if parsed is None and client is None:
            parsed = parse_store_url("redis://127.0.0.1:6379/0")
        settings = read_options(self.declared_options, {
            "namespace": namespace, "socket_timeout": socket_timeout,
            "connect_timeout": connect_timeout, "max_connections": max_connections,
            "acquire_timeout": acquire_timeout, "durability": durability,
            "batch_size": batch_size, "cluster": cluster}, parsed)
        super().__init__(namespace=settings["namespace"])
        self._url = parsed
        self._shown_url = redact_url(parsed.raw) if parsed is not None else None
        self._socket_timeout: float = settings["socket_timeout"]
        self._connect_timeout: float = settings["connect_timeout"]
        self._max_connections: int | None = settings["max_connections"]
        self._acquire_timeout: float = settings["acquire_timeout"]
        self._durability: str = settings["durability"]
        self.scan_batch_size = settings["batch_size"]
        if client is not None:
            self._cluster = isinstance(client, RedisCluster)
        else:
            assert parsed is not None
            self._cluster = parsed.scheme.endswith("+cluster") or settings["cluster"]
        self._ssl = {name: settings[name] for name in _SSL_OPTIONS
                     if settings[name] is not None}
        if parsed is not None:
            self._secrets = parsed.secrets
        self._given_client = client
        self._client: Any = client
        if self._max_connections is None:
            self._max_connections = _pool_size(client) or _DEFAULT_MAX_CONNECTIONS
        self._limit = asyncio.Semaphore(self._max_connections)
        prefix = f"kvs:{{{self.namespace}}}:"
        self._value_prefix = f"{prefix}v:".encode()
        self._index_key = f"{prefix}idx".encode()
        self._expiry_key = f"{prefix}exp".encode()

    @classmethod
    def from_url(cls, url: StoreURL, **options: Any) -> RedisStore:
        return cls(url, **options)

    def __repr__(self) -> str:
        target = repr(self._shown_url) if self._shown_url else "client=<given>"
        return f"RedisStore({target}, namespace={self.namespace!r})"

    def _where(self) -> str:
        return self._shown_url or "the given client"

    # ------------------------------------------------------------------ lifecycle

    async def _open(self) -> None:
        if self._given_client is not None:
            self._check_client(self._given_client)
        else:
            self._client = self._make_client()
        try:
            if self._cluster and self._given_client is None:
                await self._client.initialize()
            else:
                await self._client.execute_command("PING")
            if self._durability == "strict":
                await self._check_durability()
        except BaseException:
            if self._given_client is None:
                await self._client.aclose()
                self._client = None
            raise

    async def _close(self) -> None:
        client, self._client = self._client, None
        if client is not None and self._given_client is None:
            await client.aclose()

    def _make_client(self) -> Any:
        url = self._url
        assert url is not None
        common: dict[str, Any] = {
            "host": url.host or "127.0.0.1",
            "username": url.username,
            "password": url.password,
            "socket_timeout": self._socket_timeout,
            "socket_connect_timeout": self._connect_timeout,
            "decode_responses": False,
            "ssl": url.scheme.startswith("rediss"),
            **self._ssl,
        }
        common["max_connections"] = self._max_connections
        # One quick retry for a dropped connection; redis-py's default (10 with backoff) would
        # keep an unreachable server from being reported for tens of seconds.
        backoff = ExponentialWithJitterBackoff(base=0.01, cap=0.25)
        db = _database(url)
        if self._cluster:
            if db:
                raise ConfigError(f"Redis Cluster has only database 0 ({self._where()})")
            return RedisCluster(port=url.port or 6379, retry=Retry(backoff, 2), **common)
        return Redis(port=url.port or 6379, db=db, retry=Retry(backoff, 1), **common)

    def _check_client(self, client: Any) -> None:
        if not isinstance(client, Redis | RedisCluster):
            raise ConfigError(f"client must be a redis.asyncio Redis or RedisCluster, "
                              f"not {type(client).__name__}")
        if client.get_encoder().decode_responses:
            raise ConfigError("the given Redis client decodes responses to str; documents are "
                              "bytes: create it with decode_responses=False")

    async def _check_durability(self) -> None:
        """``durability=strict``: refuse a server that may lose or evict acknowledged writes."""
        wanted = {"appendonly": "yes", "maxmemory-policy": "noeviction"}
        for name, expected in wanted.items():
            try:
                if self._cluster:
                    replies = await self._client.execute_command(
                        "CONFIG GET", name, target_nodes=RedisCluster.PRIMARIES)
                    found = [_config_value(reply, name) for reply in replies.values()]
                else:
                    found = [_config_value(
                        await self._client.execute_command("CONFIG GET", name), name)]
            except redis_errors.ResponseError as exc:
                raise ConfigError(
                    f"durability=strict cannot be checked on {self._where()}: CONFIG GET is "
                    f"disabled or not permitted there ({exc}); use durability=normal if the "
                    f"server is known to run with appendonly yes and maxmemory-policy "
                    f"noeviction") from None
            bad = sorted({value for value in found if value != expected})
            if bad:
                raise ConfigError(
                    f"durability=strict refuses {self._where()}: it runs with {name} "
                    f"{' / '.join(bad)}, and needs {name} {expected} so that acknowledged "
                    f"writes are kept")

    async def _acquire(self) -> None:
        """Take one of ``max_connections`` slots, waiting at most ``acquire_timeout``: under
        back-pressure callers queue, and a stuck server gives a typed error, never a hang."""
        if not self._limit.locked():
            await self._limit.acquire()  # a free slot: returns at once
            return
        try:
            async with asyncio.timeout(self._acquire_timeout):
                await self._limit.acquire()
        except TimeoutError:
            raise StoreUnavailableError(
                f"no free connection to {self._where()} within acquire_timeout="
                f"{self._acquire_timeout:g} s (max_connections={self._max_connections})"
            ) from None

    async def _command(self, *args: Any) -> Any:
        await self._acquire()
        try:
            return await self._client.execute_command(*args)
        finally:
            self._limit.release()

    async def _run(self, script: scripts.Script, keys: list[bytes], args: list[Any]) -> Any:
        """Run a (writing) script; a cancelled caller waits for its outcome, as a script that
        reached the server runs there even after the client gave up on it."""
        await self._acquire()
        try:
            return await outlive_cancellation(script(self._client, keys, args))
        finally:
            self._limit.release()

    # ------------------------------------------------------------------ single keys

    async def _get(self, key: str) -> bytes | None:
        try:
            value: bytes | None = await self._command(
                "GET", self._value_prefix + key.encode())
        except redis_errors.ResponseError as exc:
            if "WRONGTYPE" not in str(exc):
                raise
            raise self._foreign(key) from None
        return value

    def _foreign(self, key: str) -> StoreError:
        return StoreError(f"{self!r}: the value of key {key!r} is not a Redis string "
                          "(written by something other than kvsessions?)")

    async def _put(self, key: str, value: bytes, ttl: float | None) -> None:
        if ttl is None:
            member = key.encode()
            await self._run(scripts.PUT, [self._value_prefix + member, self._index_key],
                            [value, member])
        else:
            await self._write(key, value, ttl, nx=False)

    async def _put_if_absent(self, key: str, value: bytes, ttl: float | None) -> bool:
        return await self._write(key, value, ttl, nx=True)

    async def _compare_and_set(
        self, key: str, expected: bytes | None, new: bytes | None, ttl: float | None
    ) -> bool:
        member = key.encode()
        keys = [self._value_prefix + member, self._index_key, self._expiry_key]
        px = "" if ttl is None else _milliseconds(ttl)
        try:
            swapped = await self._run(scripts.COMPARE_AND_SET, keys, [
                b"" if expected is None else expected, b"" if new is None else new, member,
                px, self._value_prefix])
        except redis_errors.ResponseError as exc:
            if "WRONGTYPE" not in str(exc):
                raise
            raise self._foreign(key) from None
        return bool(swapped)

    async def _write(self, key: str, value: bytes, ttl: float | None, *, nx: bool) -> bool:
        member = key.encode()
        keys = [self._value_prefix + member, self._index_key, self._expiry_key]
        px = "" if ttl is None else _milliseconds(ttl)
        stored = await self._run(scripts.WRITE, keys,
                                 [value, member, px, "1" if nx else "", self._value_prefix])
        return bool(stored)

    async def _delete(self, key: str) -> bool:
        return await self._delete_many([key]) > 0

    # ------------------------------------------------------------------ batches

    async def _get_many(self, keys: list[str]) -> list[bytes | None]:
        prefix = self._value_prefix
        values: list[bytes | None] = await self._command(
            "MGET", *[prefix + key.encode() for key in keys])
        return values

    async def _put_many(self, items: list[tuple[str, bytes]], ttl: float | None) -> None:
        prefix = self._value_prefix
        step = self.scan_batch_size
        if ttl is not None:
            # One script per chunk: the values, their index members and expiries together.
            px = _milliseconds(ttl)
            for start in range(0, len(items), step):
                chunk = items[start:start + step]
                members = [key.encode() for key, _ in chunk]
                keys = [self._index_key, self._index_key, self._expiry_key,
                        *[prefix + member for member in members]]
                args: list[Any] = [px, prefix]
                for member, (_, value) in zip(members, chunk, strict=True):
                    args += (member, value)
                await self._run(scripts.WRITE_MANY_TTL, keys, args)
            return
        if self._cluster:
            for start in range(0, len(items), step):
                members = [key.encode() for key, _ in items[start:start + step]]
                await self._run(scripts.PUT_MANY, [self._index_key, *[prefix + m for m in members]],
                                [*members, *[value for _, value in items[start:start + step]]])
            return
        # One MULTI: MSET of the values and one ZADD of their members (chunked commands, so no
        # single command grows without bound, but all in the same transaction).
        pipe = self._client.pipeline(transaction=True)
        for start in range(0, len(items), step):
            chunk = items[start:start + step]
            mset: list[bytes] = []
            zadd: list[bytes] = []
            for key, value in chunk:
                member = key.encode()
                mset += (prefix + member, value)
                zadd += (b"0", member)
            pipe.execute_command("MSET", *mset)
            pipe.execute_command("ZADD", self._index_key, *zadd)
        await self._acquire()
        try:
            await outlive_cancellation(pipe.execute())
        finally:
            self._limit.release()

    async def _delete_many(self, keys: list[str]) -> int:
        deleted = 0
        prefix = self._value_prefix
        for start in range(0, len(keys), self.scan_batch_size):
            members = [key.encode() for key in keys[start:start + self.scan_batch_size]]
            script_keys = [self._index_key, self._expiry_key,
                           *[prefix + member for member in members]]
            deleted += int(await self._run(scripts.DELETE, script_keys, members))
        return deleted

    # ------------------------------------------------------------------ ordered scan

    async def _scan_page(
        self, key_range: KeyRange, reverse: bool, limit: int
    ) -> tuple[list[tuple[str, bytes]], str | None]:
        low = (b"[" if key_range.lower_inclusive else b"(") + key_range.lower.encode()
        if low == b"[":
            low = b"-"
        high = b"+" if key_range.upper is None else b"(" + key_range.upper.encode()
        if reverse:
            members: list[bytes] = await self._command(
                "ZREVRANGEBYLEX", self._index_key, high, low, "LIMIT", 0, limit)
        else:
            members = await self._command(
                "ZRANGEBYLEX", self._index_key, low, high, "LIMIT", 0, limit)
        if not members:
            return [], None
        prefix = self._value_prefix
        value_keys = [prefix + member for member in members]
        values: list[bytes | None] = await self._command("MGET", *value_keys)
        items = [(member.decode(), value)
                 for member, value in zip(members, values, strict=True) if value is not None]
        if len(items) < len(members):
            await self._clean_index(members, values)
        last = members[-1].decode() if len(members) >= limit else None
        return items, last

    async def _clean_index(self, members: list[bytes], values: list[bytes | None]) -> None:
        """Un-index members whose value expired or vanished, unless re-put meanwhile."""
        gone = [member for member, value in zip(members, values, strict=True) if value is None]
        prefix = self._value_prefix
        foreign = await self._run(scripts.CLEAN, [self._index_key, *[prefix + m for m in gone]],
                                  gone)
        if foreign:
            raise self._foreign(foreign[0].decode())

    # ------------------------------------------------------------------ errors

    def _classify_error(self, exc: Exception) -> type[KVSessionsError] | None:
        if redis_errors is None:
            return None
        unavailable = (
            redis_errors.ConnectionError,  # includes BusyLoadingError, AuthenticationError
            redis_errors.TimeoutError,
            redis_errors.ClusterDownError,  # includes MasterDownError
            redis_errors.TryAgainError,
            redis_errors.ReadOnlyError,
        )
        if isinstance(exc, unavailable):
            return StoreUnavailableError
        if isinstance(exc, redis_errors.RedisClusterException) and (
            "cannot be connected" in str(exc) or "no reachable" in str(exc).lower()
        ):
            return StoreUnavailableError
        if isinstance(exc, OSError | TimeoutError):
            return StoreUnavailableError
        return StoreError


def _pool_size(client: Any) -> int | None:
    """The connection limit of a client handed in, so the store never exceeds it."""
    pool = getattr(client, "connection_pool", client)
    size = getattr(pool, "max_connections", None)
    return size if isinstance(size, int) and size > 0 else None


def _database(url: StoreURL) -> int:
    path = url.path.strip("/")
    if not path:
        return 0
    if not path.isdigit():
        raise ConfigError(f"the path of {url.redacted} must be a database number like /0")
    return int(path)


def _milliseconds(ttl: float) -> int:
    return max(1, round(ttl * 1000))


def _config_value(reply: Any, name: str) -> str:
    """CONFIG GET answers a flat list or a dict depending on the protocol and client."""
    if isinstance(reply, dict):
        pairs = list(reply.items())
    else:
        items = list(reply)
        pairs = list(zip(items[::2], items[1::2], strict=True))
    for key, value in pairs:
        key_text = key.decode() if isinstance(key, bytes) else str(key)
        if key_text == name:
            return value.decode() if isinstance(value, bytes) else str(value)
    return "(not reported)"

