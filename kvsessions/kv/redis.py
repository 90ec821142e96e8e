"""Redis and Redis Cluster: one string per document plus, per partition, a sorted set that keeps
the partition's keys in order, and a directory of runs that orders the partitions' key ranges.

The layout is in ``kvsessions.kv.redis_layout``: each partition (``kvsessions.kv.partitions``:
one session's keys) under a hash tag of its own, so a cluster spreads sessions over its nodes
while one session stays in one slot. A value and its index member are written together by one
Lua script on the partition, so scans are ordered and pageable without KEYS, SCAN or a
client-side sort. A scan inside one run (one session's messages, one index) reads one
partition's sorted set; a scan that spans runs walks the directory (a sorted set of run names)
in order and reads each run from its partition: one directory read per page of runs, plus one
read per run (runs of one key are fetched together with one MGET per slot).
Redis expires values by itself; the index learns of it in two places, both through a script
that removes a member only if its value is really gone (so a concurrent re-put stays indexed):
a scan page drops and cleans members whose value is missing, and each write with a ttl sweeps
a few index members whose expiry has passed, so the index does not grow with dead keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast

from kvsessions.errors import (
    ConfigError,
    EventLoopError,
    KVSessionsError,
    MissingDependencyError,
    StoreError,
    StoreUnavailableError,
)
from kvsessions.kv import redis_scripts as scripts
from kvsessions.kv.base import KeyRange, KVStore, closed_after, outlive_cancellation
from kvsessions.kv.loops import PerLoop, describe_loop
from kvsessions.kv.options import (
    SHARED,
    Duration,
    Flag,
    Text,
    Whole,
    batch_size_option,
    read_options,
)
from kvsessions.kv.partitions import (
    partition_of,
    run_bounds,
    run_of,
    run_of_range,
    single_key_run,
)
from kvsessions.kv.redis_layout import (
    LegacyNames,
    PartitionNames,
    directory_name,
    partition_names,
)
from kvsessions.urls import StoreURL, parse_store_url, redact_url

try:
    import redis.exceptions as redis_errors
    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster
    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialWithJitterBackoff
except ImportError:  # pragma: no cover - exercised by a test that hides the package
    redis_errors = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, AsyncIterator

    from redis.asyncio import Redis as RedisClient
    from redis.asyncio.cluster import RedisCluster as RedisClusterClient

    AnyRedis = RedisClient | RedisClusterClient

__all__ = ["RedisStore"]

Durability = Literal["normal", "strict"]
#: A script with its keys and arguments.
_ScriptCall = tuple[scripts.Script, list[bytes], list[Any]]
#: TLS options of the URL, passed to redis-py as they are (the last is a flag).
_SSL_OPTIONS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs",
                "ssl_check_hostname")
#: Commands in flight at once (and connections per server): redis-py's asyncio pools raise
#: instead of waiting when they run out, so the store queues its callers itself.
_DEFAULT_MAX_CONNECTIONS = 64


@dataclass(frozen=True, slots=True)
class _LoopClient:
    """One event loop's client, and the slots that bound its commands in flight."""

    client: Any
    limit: asyncio.Semaphore


@dataclass(frozen=True, slots=True)
class _WriteScript:
    """A writing script that may find its runs missing from the directory: ``call(confirmed)``
    is the script with its keys and arguments; it answers -1 (``runs`` are missing) or a list
    of the missing runs, having written nothing, unless ``confirmed`` is '1'."""

    runs: tuple[str, ...]
    call: Callable[[str], _ScriptCall]

    def missing(self, result: Any) -> list[Any] | None:
        """The runs to add to the directory before writing again, from a first answer."""
        if isinstance(result, list):
            return result
        return list(self.runs) if result == -1 else None


@dataclass(frozen=True, slots=True)
class _OtherKeys:
    """The keys a ``compare_and_set_with`` changes beside its own, by what it does to them."""

    create: list[tuple[str, bytes]]
    put: list[tuple[str, bytes]]
    delete: list[str]
    swap: list[tuple[str, bytes, bytes | None]]

    @property
    def keys(self) -> list[str]:
        """In the order the script takes them: created, put, swapped, deleted."""
        return [*(key for key, _ in self.create), *(key for key, _ in self.put),
                *(key for key, _, _ in self.swap), *self.delete]

    def written_runs(self, key: str) -> list[str]:
        """The runs a script that writes ``key`` and these keys stores values in."""
        return list(dict.fromkeys(run_of(other) for other in (
            key, *(other for other, _ in self.create), *(other for other, _ in self.put),
            *(other for other, _, value in self.swap if value is not None))))

    @property
    def empty(self) -> bool:
        return not (self.create or self.put or self.delete or self.swap)

    def split(self, partition: str) -> tuple[_OtherKeys, _OtherKeys]:
        """Those in ``partition``, and the others."""
        def inside(key: str) -> bool:
            return partition_of(key) == partition

        return (_OtherKeys([item for item in self.create if inside(item[0])],
                           [item for item in self.put if inside(item[0])],
                           [key for key in self.delete if inside(key)],
                           [item for item in self.swap if inside(item[0])]),
                _OtherKeys([item for item in self.create if not inside(item[0])],
                           [item for item in self.put if not inside(item[0])],
                           [key for key in self.delete if not inside(key)],
                           [item for item in self.swap if not inside(item[0])]))


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
        # one script may name several partitions on one server, not across cluster slots
        self._atomic_compare_and_set_with = not self._cluster
        self._ssl = {name: settings[name] for name in _SSL_OPTIONS
                     if settings[name] is not None}
        if parsed is not None:
            self._secrets = parsed.secrets
        self._given_client = client
        if self._max_connections is None:
            self._max_connections = _pool_size(client) or _DEFAULT_MAX_CONNECTIONS
        self._per_loop = self._clients = PerLoop(self._connect, self._disconnect)
        self._directory = directory_name(self.namespace)
        self._legacy = LegacyNames.of(self.namespace)
        #: True while the namespace holds keys of the one-tag layout of earlier releases.
        self._legacy_found = False
        self._moving_layout = False

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
        await self._clients.get()
        try:
            if self._durability == "strict":
                await self._check_durability()
            self._legacy_found = bool(await self._client.execute_command(
                "EXISTS", self._legacy.index))
        except BaseException:
            await self._clients.close()
            raise

    async def _close(self) -> None:
        await self._clients.close()

    @property
    def _client(self) -> Any:
        """The calling event loop's client (``_ready`` made it)."""
        return self._clients.current().client

    async def _connect(self) -> _LoopClient:
        """The calling event loop's client: ours, made and checked here, or the one given."""
        if self._given_client is not None:
            self._check_client(self._given_client)
            first_loop = self._clients.first_loop_if_other()
            if first_loop is not None:
                raise EventLoopError(
                    f"{self!r} was given a client that belongs to {first_loop}; "
                    f"it cannot serve {describe_loop(asyncio.get_running_loop())}: give each "
                    "event loop its own client, or pass a URL instead")
            client = self._given_client
        else:
            client = self._make_client()
        try:
            if self._cluster and self._given_client is None:
                await client.initialize()
            else:
                await client.execute_command("PING")
        except BaseException:
            if self._given_client is None:
                await client.aclose()
            raise
        assert self._max_connections is not None
        return _LoopClient(client, asyncio.Semaphore(self._max_connections))

    async def _disconnect(self, loop_client: _LoopClient) -> None:
        if self._given_client is None:
            await loop_client.client.aclose()

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

    async def _acquire(self) -> _LoopClient:
        """Take one of ``max_connections`` slots of the calling loop's client, waiting at most
        ``acquire_timeout``: under back-pressure callers queue, and a stuck server gives a
        typed error, never a hang."""
        loop_client = self._clients.current()
        limit = loop_client.limit
        if not limit.locked():
            await limit.acquire()  # a free slot: returns at once
            return loop_client
        try:
            async with asyncio.timeout(self._acquire_timeout):
                await limit.acquire()
        except TimeoutError:
            raise StoreUnavailableError(
                f"no free connection to {self._where()} within acquire_timeout="
                f"{self._acquire_timeout:g} s (max_connections={self._max_connections})"
            ) from None
        return loop_client

    async def _command(self, *args: Any) -> Any:
        self._refuse_legacy()
        loop_client = await self._acquire()
        try:
            return await loop_client.client.execute_command(*args)
        finally:
            loop_client.limit.release()

    async def _read(self, script: scripts.Script, keys: list[bytes], args: list[Any]) -> Any:
        """Run a script that only reads."""
        self._refuse_legacy()
        loop_client = await self._acquire()
        try:
            return await script(loop_client.client, keys, args)
        finally:
            loop_client.limit.release()

    async def _run(self, script: scripts.Script, keys: list[bytes], args: list[Any]) -> Any:
        """Run a (writing) script; a cancelled caller waits for its outcome, as a script that
        reached the server runs there even after the client gave up on it."""
        self._refuse_legacy()
        loop_client = await self._acquire()
        try:
            return await outlive_cancellation(script(loop_client.client, keys, args))
        finally:
            loop_client.limit.release()

    # ------------------------------------------------------------------ the layout

    def _names(self, key: str) -> PartitionNames:
        return partition_names(self.namespace, partition_of(key))

    def _refuse_legacy(self) -> None:
        """Every server call passes here: a namespace still in the layout of an earlier
        release is refused (its data would look missing) until it is moved."""
        if self._legacy_found and not self._moving_layout:
            raise StoreError(
                f"{self!r} holds keys of the layout of an earlier release (the whole namespace "
                "under one hash tag); move them once with `kvsessions upgrade URL` "
                "(KVStore.upgrade_layout), after stopping processes that run the earlier "
                "release")

    async def _registered(self, write: _WriteScript) -> Any:
        """Run ``write``; when the directory lacks its runs, add them, then write again,
        confirmed (so a key is never stored where a scan over the directory misses it)."""
        result = await self._run(*write.call(""))
        missing = write.missing(result)
        if missing is None:
            return result
        await self._add_runs(missing)
        return await self._run(*write.call("1"))

    async def _registered_outcomes(self, writes: list[_WriteScript]) -> list[Any]:
        """``_registered`` of every write, side by side (one round trip per server, two when
        runs were missing); the answers in order, an exception in place of a failed one."""
        outcomes = await self._outcomes([write.call("") for write in writes])
        missing = {position: runs for position, (write, outcome)
                   in enumerate(zip(writes, outcomes, strict=True))
                   if not isinstance(outcome, BaseException)
                   and (runs := write.missing(outcome)) is not None}
        if missing:
            try:
                await self._add_runs([run for runs in missing.values() for run in runs])
            except Exception as exc:
                for position in missing:
                    outcomes[position] = exc
                return outcomes
            again = await self._outcomes([writes[position].call("1") for position in missing])
            for position, outcome in zip(missing, again, strict=True):
                outcomes[position] = outcome
        return outcomes

    async def _add_runs(self, runs: list[Any]) -> None:
        pairs: list[Any] = []
        for run in dict.fromkeys(runs):
            pairs += (0, run)
        await self._command("ZADD", self._directory, *pairs)

    # ------------------------------------------------------------------ single keys

    async def _get(self, key: str) -> bytes | None:
        try:
            value: bytes | None = await self._command("GET", self._names(key).value(key))
        except redis_errors.ResponseError as exc:
            if "WRONGTYPE" not in str(exc):
                raise
            raise self._foreign(key) from None
        return value

    def _foreign(self, key: str) -> StoreError:
        return StoreError(f"{self!r}: the value of key {key!r} is not a Redis string "
                          "(written by something other than kvsessions?)")

    async def _put(self, key: str, value: bytes, ttl: float | None) -> None:
        if ttl is not None:
            await self._write(key, value, ttl, nx=False)
            return
        names = self._names(key)
        member = key.encode()
        run = run_of(key)
        keys = [names.value_prefix + member, names.index, names.expiry, names.runs]
        await self._registered(_WriteScript((run,), lambda confirmed: (
            scripts.PUT, keys, [value, member, run, confirmed])))

    async def _put_if_absent(self, key: str, value: bytes, ttl: float | None) -> bool:
        return await self._write(key, value, ttl, nx=True)

    async def _compare_and_set(
        self, key: str, expected: bytes | None, new: bytes | None, ttl: float | None
    ) -> bool:
        try:
            swapped = await self._registered(self._compare_and_set_script(key, expected, new,
                                                                          ttl))
        except redis_errors.ResponseError as exc:
            raise self._foreign_or(exc, key) from None
        return bool(swapped)

    def _compare_and_set_script(self, key: str, expected: bytes | None, new: bytes | None,
                                ttl: float | None) -> _WriteScript:
        names = self._names(key)
        member = key.encode()
        run = run_of(key)
        keys = [names.value_prefix + member, names.index, names.expiry, names.runs]
        px = "" if ttl is None else _milliseconds(ttl)
        return _WriteScript((run,), lambda confirmed: (scripts.COMPARE_AND_SET, keys, [
            b"" if expected is None else expected, b"" if new is None else new,
            member, px, names.value_prefix, run, confirmed]))

    async def _compare_and_set_with(self, key: str, expected: bytes | None,
                                    new: bytes | None, create: list[tuple[str, bytes]],
                                    put: list[tuple[str, bytes]], delete: list[str],
                                    swap: list[tuple[str, bytes, bytes | None]]) -> bool:
        """One script over every key's partition names where it can run: on a single server
        whatever the partitions, on a cluster when every key is in the head's partition (a
        script across slots is refused, CROSSSLOT). Else ``_across_slots``."""
        others = _OtherKeys(create, put, delete, swap)
        if not self._cluster:
            return await self._changed_together(key, expected, new, others)
        inside, outside = others.split(partition_of(key))
        if outside.empty:
            return await self._changed_together(key, expected, new, inside)
        return await outlive_cancellation(
            self._across_slots(key, expected, new, inside, outside))

    def atomic_with(self, key: str, others: Iterable[str]) -> bool:
        """On a cluster, the keys of ``key``'s partition (its slot) change with it."""
        if not self._cluster:
            return True
        partition = partition_of(key)
        return all(partition_of(other) == partition for other in others)

    async def _changed_together(self, key: str, expected: bytes | None, new: bytes | None,
                                others: _OtherKeys, *, confirmed: bool = False) -> bool:
        """``compare_and_set_with`` as one script, atomic: everything or nothing.
        ``confirmed``: the runs of the keys it writes are in the directory already."""
        named = [key, *others.keys]
        keys: list[bytes] = []
        for other in named:
            names = self._names(other)
            keys += (names.value(other), names.index, names.expiry, names.runs)
        head: list[Any] = [b"" if expected is None else expected, b"" if new is None else new]
        rest: list[Any] = [len(others.create), len(others.put), len(others.swap),
                           *[other.encode() for other in named],
                           *[run_of(other) for other in named],
                           *[value for _, value in others.create],
                           *[value for _, value in others.put]]
        for _, read, value in others.swap:
            rest += (read, b"" if value is None else value)
        script = _WriteScript((), lambda confirmed: (
            scripts.COMPARE_AND_SET_WITH, keys, [*head, confirmed, *rest]))
        try:
            result = await (self._run(*script.call("1")) if confirmed
                            else self._registered(script))
        except redis_errors.ResponseError as exc:
            raise self._foreign_or(exc, key) from None
        return bool(result == 1)

    async def _across_slots(self, key: str, expected: bytes | None, new: bytes | None,
                            inside: _OtherKeys, outside: _OtherKeys) -> bool:
        """``compare_and_set_with`` on a cluster when some keys lie outside the head's slot,
        in the order of the non-atomic default with the fewest round trips: the creates,
        swaps and puts outside, side by side; then one script in the head's slot with
        everything inside it and the head's compare-and-set; then, if that succeeded, the
        deletes outside, side by side. On failure the creates and swaps outside that
        succeeded, or whose outcome is unknown (an error), are taken back, each only if it
        still holds what this call wrote; the puts stay. Runs to its end even when the
        caller is cancelled (see the caller).
        A head created here (``expected`` None) is most likely in a run of its own that the
        directory lacks: the runs the script writes in are added in the first round, beside
        the writes outside, and the script runs confirmed, instead of being refused, adding
        them and running again (two round trips more)."""
        created = [self._write_script(other, value, None, nx=True)
                   for other, value in outside.create]
        swapped = [self._compare_and_set_script(other, read, value, None)
                   for other, read, value in outside.swap]
        groups: dict[str, list[tuple[str, bytes]]] = {}
        for item in outside.put:
            groups.setdefault(partition_of(item[0]), []).append(item)
        before = self._registered_outcomes([
            *created, *swapped,
            *(self._write_many_script(partition, group, "") for partition, group in
              groups.items())])
        fresh = expected is None and new is not None
        try:
            if fresh:
                outcomes, added = await asyncio.gather(
                    before, self._add_runs(inside.written_runs(key)), return_exceptions=True)
                if isinstance(outcomes, BaseException):
                    raise outcomes
                if isinstance(added, BaseException):
                    outcomes = [*outcomes, added]
            else:
                outcomes = await before
        except Exception:
            await self._take_back(outside.create, outside.swap)  # what landed is unknown
            raise

        def landed(outcome: Any) -> bool:
            """Written, or may have been: a call that failed without the server's answer (a
            script the server refused, ResponseError, wrote nothing)."""
            return outcome == 1 or (isinstance(outcome, Exception)
                                    and not isinstance(outcome, redis_errors.ResponseError))

        made = [item for item, outcome in zip(outside.create, outcomes, strict=False)
                if landed(outcome)]
        moved = [item for item, outcome in zip(outside.swap, outcomes[len(created):],
                                               strict=False) if landed(outcome)]
        changed = False
        try:
            for outcome in outcomes:
                if isinstance(outcome, redis_errors.ResponseError):
                    raise self._foreign_or(outcome, key)
                if isinstance(outcome, BaseException):
                    raise outcome
            if len(made) == len(created) and len(moved) == len(swapped):
                changed = await self._changed_together(key, expected, new, inside,
                                                       confirmed=fresh)
        finally:
            if not changed:
                await self._take_back(made, moved)
        if changed and outside.delete:
            await self._delete_many(outside.delete)
        return changed

    async def _take_back(self, made: list[tuple[str, bytes]],
                         moved: list[tuple[str, bytes, bytes | None]]) -> None:
        """Undo creates and swaps of a failed ``_across_slots``, each only where the key
        still holds what that call wrote, side by side."""
        undo = [*(self._compare_and_set_script(other, value, None, None)
                  for other, value in made),
                *(self._compare_and_set_script(other, value, read, None)
                  for other, read, value in moved)]
        if undo:
            for outcome in await self._registered_outcomes(undo):
                if isinstance(outcome, BaseException):
                    raise outcome

    def _foreign_or(self, exc: Exception, key: str) -> Exception:
        """A script's error: a key of another Redis type (WRONGTYPE) names ``key``."""
        return self._foreign(key) if "WRONGTYPE" in str(exc) else exc

    async def _write(self, key: str, value: bytes, ttl: float | None, *, nx: bool) -> bool:
        return bool(await self._registered(self._write_script(key, value, ttl, nx=nx)))

    def _write_script(self, key: str, value: bytes, ttl: float | None, *,
                      nx: bool) -> _WriteScript:
        names = self._names(key)
        member = key.encode()
        run = run_of(key)
        keys = [names.value_prefix + member, names.index, names.expiry, names.runs]
        px = "" if ttl is None else _milliseconds(ttl)
        return _WriteScript((run,), lambda confirmed: (
            scripts.WRITE, keys,
            [value, member, px, "1" if nx else "", names.value_prefix, run, confirmed]))

    async def _delete(self, key: str) -> bool:
        return await self._delete_many([key]) > 0

    # ------------------------------------------------------------------ batches

    async def _get_many(self, keys: list[str]) -> list[bytes | None]:
        names = [self._names(key).value(key) for key in keys]
        return await self._values(names)

    async def _values(self, names: list[bytes]) -> list[bytes | None]:
        """MGET of value keys of any partitions: one MGET per slot on a cluster."""
        self._refuse_legacy()
        loop_client = await self._acquire()
        try:
            if self._cluster:
                values: list[bytes | None] = await loop_client.client.mget_nonatomic(names)
            else:
                values = await loop_client.client.execute_command("MGET", *names)
        finally:
            loop_client.limit.release()
        return values

    async def _put_many(self, items: list[tuple[str, bytes]], ttl: float | None) -> None:
        """One script per partition, which writes all of its items or none; the scripts go
        in one pipeline (one round trip per server), and the call returns (or raises) only
        once all have ended. Runs missing from the directory are added, then the partitions
        that lacked them are written again, confirmed."""
        groups: dict[str, list[tuple[str, bytes]]] = {}
        for item in items:
            groups.setdefault(partition_of(item[0]), []).append(item)
        px = "" if ttl is None else _milliseconds(ttl)
        _raise_first(await self._registered_outcomes([
            self._write_many_script(partition, group, px) for partition, group in
            groups.items()]))

    def _write_many_script(self, partition: str, items: list[tuple[str, bytes]],
                           px: Any) -> _WriteScript:
        names = partition_names(self.namespace, partition)
        members = [key.encode() for key, _ in items]
        runs = list(dict.fromkeys(run_of(key) for key, _ in items))
        keys = [names.runs, names.index, names.expiry,
                *[names.value_prefix + member for member in members]]
        values = [value for _, value in items]
        return _WriteScript((), lambda confirmed: (
            scripts.WRITE_MANY, keys, [px, names.value_prefix, confirmed, len(runs), *runs,
                                       *members, *values]))

    async def _at_once(self, calls: list[_ScriptCall]) -> list[Any]:
        """``_outcomes``, raising the first error once every script has ended."""
        return _raise_first(await self._outcomes(calls))

    async def _outcomes(self, calls: list[_ScriptCall]) -> list[Any]:
        """Run writing scripts in one pipeline (one round trip per server; a cluster
        client's pipeline sends to its nodes side by side, for less client time than one
        command each, with redis-py 8: 200 against 250 µs for two scripts, 480 against 600
        for five), answers in order, an exception in place of a script that failed; a
        script the server has not cached yet runs again by EVAL."""
        if len(calls) == 1:
            try:
                return [await self._run(*calls[0])]
            except Exception as exc:
                return [exc]
        self._refuse_legacy()
        loop_client = await self._acquire()
        try:
            pipe = loop_client.client.pipeline(transaction=False)
            for script, keys, args in calls:
                pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
            results: list[Any] = await outlive_cancellation(pipe.execute(raise_on_error=False))
        finally:
            loop_client.limit.release()
        for position, result in enumerate(results):
            if isinstance(result, redis_errors.NoScriptError):
                try:
                    results[position] = await self._run(*calls[position])
                except Exception as exc:
                    results[position] = exc
        return results

    async def _delete_many(self, keys: list[str]) -> int:
        calls: list[_ScriptCall] = []
        groups: dict[str, list[str]] = {}
        for key in keys:
            groups.setdefault(partition_of(key), []).append(key)
        for partition, group in groups.items():
            names = partition_names(self.namespace, partition)
            for start in range(0, len(group), self.scan_batch_size):
                members = [key.encode() for key in group[start:start + self.scan_batch_size]]
                calls.append((scripts.DELETE, [names.index, names.expiry,
                                               *[names.value_prefix + m for m in members]],
                              members))
        return sum(int(deleted) for deleted in await self._at_once(calls))

    # ------------------------------------------------------------------ ordered scan

    async def _scan(
        self, key_range: KeyRange, reverse: bool, limit: int | None = None
    ) -> AsyncIterator[list[tuple[str, bytes]]]:
        """Pages of a scan: inside one run, straight from its partition; across runs, by
        walking the directory of runs in order (see the module docstring)."""
        run = run_of_range(key_range.lower, key_range.upper)
        scan = (self._scan_directory(key_range, reverse, limit) if run is None
                else self._scan_run(run, key_range, reverse, limit))
        async with closed_after(scan) as pages:
            async for page in pages:
                yield page

    async def _get_and_last(self, key: str, key_range: KeyRange
                            ) -> tuple[bytes | None, tuple[str, bytes] | None]:
        """One script where the key and the range are in one partition (a session's head and
        its messages: one slot on a cluster too); else, or when the last members found have
        no value, the base class's two reads."""
        run = run_of_range(key_range.lower, key_range.upper)
        if run is None or partition_of(run) != partition_of(key):
            return await super()._get_and_last(key, key_range)
        names = self._names(key)
        low, high = _lex_bounds(key_range)
        try:
            reply = await self._read(scripts.GET_AND_LAST, [names.value(key), names.index],
                                     [low, high, names.value_prefix, _LAST_TRIED])
        except redis_errors.ResponseError as exc:
            if "WRONGTYPE" not in str(exc):
                raise
            raise self._foreign(key) from None
        if len(reply) == 1:
            return reply[0], None
        if len(reply) == 2:
            return await super()._get_and_last(key, key_range)
        return reply[0], (reply[1].decode(), reply[2])

    async def _scan_page(
        self, key_range: KeyRange, reverse: bool, limit: int
    ) -> tuple[list[tuple[str, bytes]], str | None]:
        """One page of any scan (the base class's hook; ``_scan`` does better)."""
        items: list[tuple[str, bytes]] = []
        scan = cast("AsyncGenerator[list[tuple[str, bytes]], None]",
                    self._scan(key_range, reverse, limit))
        async with contextlib.aclosing(scan) as pages:
            async for page in pages:
                items += page
                if len(items) >= limit:
                    items = items[:limit]
                    return items, items[-1][0]
        return items, None

    async def _scan_run(
        self, run: str, key_range: KeyRange, reverse: bool, limit: int | None
    ) -> AsyncIterator[list[tuple[str, bytes]]]:
        """Pages of ``key_range`` (inside ``run``) from the run's partition, keyset-paged."""
        names = partition_names(self.namespace, partition_of(run))
        read_page = functools.partial(self._partition_page, names)
        async with closed_after(self._keyset_pages(read_page, key_range, reverse,
                                                   limit)) as pages:
            async for page in pages:
                yield page

    async def _partition_page(
        self, names: PartitionNames, key_range: KeyRange, reverse: bool, limit: int
    ) -> tuple[list[tuple[str, bytes]], str | None]:
        low, high = _lex_bounds(key_range)
        reply: list[bytes | None] = await self._read(scripts.PAGE, [names.index], [
            low, high, limit, "1" if reverse else "", names.value_prefix])
        if not reply:
            return [], None
        members = cast("list[bytes]", reply[0::2])
        values = reply[1::2]
        items = [(member.decode(), value)
                 for member, value in zip(members, values, strict=True) if value is not None]
        if len(items) < len(members):
            await self._clean_index(names, members, values)
        last = members[-1].decode() if len(members) >= limit else None
        return items, last

    async def _clean_index(self, names: PartitionNames, members: list[bytes],
                           values: list[bytes | None]) -> None:
        """Un-index members whose value expired or vanished, unless re-put meanwhile."""
        gone = [member for member, value in zip(members, values, strict=True) if value is None]
        prefix = names.value_prefix
        foreign = await self._run(scripts.CLEAN, [names.index, *[prefix + m for m in gone]],
                                  gone)
        if foreign:
            raise self._foreign(foreign[0].decode())

    async def _scan_directory(
        self, key_range: KeyRange, reverse: bool, limit: int | None
    ) -> AsyncIterator[list[tuple[str, bytes]]]:
        """Pages of a scan over several runs: the directory's run names in order, in pages;
        each run of many keys read from its partition, runs of one key fetched together."""
        remaining = limit

        def spent(page: list[tuple[str, bytes]]) -> bool:
            """Count a page given out against ``limit``: True once it is reached."""
            nonlocal remaining
            if remaining is None:
                return False
            remaining -= len(page)
            return remaining <= 0

        def run_pages(name: str) -> contextlib.AbstractAsyncContextManager[
                AsyncIterator[list[tuple[str, bytes]]]]:
            """The pages of run ``name`` within the range, at most what is left to give."""
            return closed_after(self._scan_run(name, _clamp(key_range, name), reverse,
                                               remaining))

        # The run that holds ``lower`` may sort before it ("message:s:" before
        # "message:s:m5"); the directory read below starts after ``lower``, so that run is
        # read on its own: first going forwards, last going backwards.
        first = run_of(key_range.lower)
        first_apart = not single_key_run(first)
        if first_apart and not reverse:
            async with run_pages(first) as pages:
                async for page in pages:
                    yield page
                    if spent(page):
                        return
        cursor = key_range
        if first_apart:
            cursor = KeyRange(key_range.lower, False, key_range.upper)
        while True:
            size = self.scan_batch_size if remaining is None else min(self.scan_batch_size,
                                                                       remaining)
            low, high = _lex_bounds(cursor)
            if reverse:
                runs: list[bytes] = await self._command(
                    "ZREVRANGEBYLEX", self._directory, high, low, "LIMIT", 0, size)
            else:
                runs = await self._command(
                    "ZRANGEBYLEX", self._directory, low, high, "LIMIT", 0, size)
            single: list[str] = []
            for name in [run.decode() for run in runs]:
                if single_key_run(name):
                    single.append(name)
                    continue
                async for page in self._single_key_runs(single):
                    yield page
                    if spent(page):
                        return
                single = []
                async with run_pages(name) as pages:
                    async for page in pages:
                        yield page
                        if spent(page):
                            return
            async for page in self._single_key_runs(single):
                yield page
                if spent(page):
                    return
            if len(runs) < size:
                break
            last = runs[-1].decode()
            cursor = (KeyRange(cursor.lower, cursor.lower_inclusive, last) if reverse
                      else KeyRange(last, False, cursor.upper))
        if first_apart and reverse:
            async with run_pages(first) as pages:
                async for page in pages:
                    yield page

    async def _single_key_runs(self, keys: list[str]) -> AsyncIterator[list[tuple[str, bytes]]]:
        """The live values of runs of one key each (in the order given), as one page."""
        if not keys:
            return
        values = await self._get_many(keys)
        items = [(key, value) for key, value in zip(keys, values, strict=True)
                 if value is not None]
        if len(items) < len(keys):
            # Expired, deleted (their directory entry stays) or foreign: clean as a page does.
            gone: dict[str, list[bytes]] = {}
            for key, value in zip(keys, values, strict=True):
                if value is None:
                    gone.setdefault(partition_of(key), []).append(key.encode())
            for partition, members in gone.items():
                await self._clean_index(partition_names(self.namespace, partition), members,
                                        [None] * len(members))
        if items:
            yield items

    async def _drop_namespace(self) -> None:
        """Delete every key of the namespace, through the directory, in both layouts (for
        tests and benchmarks, which each use a namespace of their own)."""
        await self._ready()
        self._moving_layout = True
        try:
            await self._drop_everything()
        finally:
            self._moving_layout = False
        self._legacy_found = False

    async def _drop_everything(self) -> None:
        runs: list[bytes] = await self._command("ZRANGE", self._directory, 0, -1)
        partitions = {partition_of(run.decode()) for run in runs}
        legacy = self._legacy
        every = [*(partition_names(self.namespace, p) for p in partitions),
                 PartitionNames(legacy.value_prefix, legacy.index, legacy.expiry, legacy.expiry)]
        for names in every:
            members: list[bytes] = await self._command("ZRANGE", names.index, 0, -1)
            for start in range(0, len(members), 1000):
                await self._command("DEL", *[names.value_prefix + member
                                             for member in members[start:start + 1000]])
            await self._command("DEL", names.index, names.expiry, names.runs)
        await self._command("DEL", self._directory)

    # ------------------------------------------------------------------ earlier layouts

    async def upgrade_layout(self) -> int:
        """Move the keys an earlier release kept under the namespace's one hash tag into
        their partitions (with their remaining ttl); the number moved. Each batch is written
        to the new layout before it is removed from the old one, so an interrupted run loses
        nothing and the next run carries on. Stop processes of the earlier release first:
        what they write meanwhile to the old layout is moved only by a later run."""
        await self._ready()
        if not self._legacy_found:
            return 0
        self._moving_layout = True
        try:
            moved = await self._move_legacy_keys()
        finally:
            self._moving_layout = False
        self._legacy_found = False
        return moved

    async def _move_legacy_keys(self) -> int:
        legacy = self._legacy
        moved = 0
        while True:
            members: list[bytes] = await self._command(
                "ZRANGEBYLEX", legacy.index, "-", "+", "LIMIT", 0, self.scan_batch_size)
            if not members:
                break
            value_keys = [legacy.value_prefix + member for member in members]
            values: list[bytes | None] = await self._command("MGET", *value_keys)
            lasting: list[tuple[str, bytes]] = []
            for member, value_key, value in zip(members, value_keys, values, strict=True):
                if value is None:
                    continue
                remaining_ms = int(await self._command("PTTL", value_key))
                if remaining_ms > 0:
                    await self._put(member.decode(), value, remaining_ms / 1000)
                elif remaining_ms == -1:
                    lasting.append((member.decode(), value))
                moved += 1
            if lasting:
                await self._put_many(lasting, None)
            await self._run(scripts.DELETE, [legacy.index, legacy.expiry, *value_keys], members)
        await self._command("DEL", legacy.expiry)
        return moved

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


def _raise_first(outcomes: list[Any]) -> list[Any]:
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    return outcomes


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


#: ``get_and_last``: the last members one script tries for a value before the page-by-page
#: read takes over (members whose value expired stay in the index until a scan cleans them).
_LAST_TRIED = 8


def _lex_bounds(key_range: KeyRange) -> tuple[bytes, bytes]:
    """``key_range`` as the min and max arguments of ZRANGEBYLEX."""
    low = (b"[" if key_range.lower_inclusive else b"(") + key_range.lower.encode()
    if low == b"[":
        low = b"-"
    high = b"+" if key_range.upper is None else b"(" + key_range.upper.encode()
    return low, high


def _clamp(key_range: KeyRange, run: str) -> KeyRange:
    """The part of ``key_range`` inside ``run``."""
    lower, upper = run_bounds(run)
    if key_range.lower >= lower:
        lower, inclusive = key_range.lower, key_range.lower_inclusive
    else:
        inclusive = True
    if key_range.upper is not None and (upper is None or key_range.upper < upper):
        upper = key_range.upper
    return KeyRange(lower, inclusive, upper)


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

