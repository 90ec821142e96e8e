"""The key-value contract every store keeps, and the base class that enforces it.

Keys are ``str`` of 1..512 UTF-8 bytes without NUL. Values are ``bytes`` holding one JSON
object. On every adapter:

* ``put`` is atomic per key: a reader sees the old value or the new one, never a torn one.
* ``scan`` yields ``(key, value)`` in ascending UTF-8 byte order of the keys (descending with
  ``reverse=True``), in batches, never the whole store in memory. ``start_after`` is a cursor
  in the order of the scan (exclusive), so ``start_after`` + ``limit`` page through a prefix
  exactly, forwards and backwards. The prefix is matched literally.
* ``put_if_absent`` is atomic: of many concurrent calls on one absent key exactly one wins.
* ``compare_and_set(key, expected, new)`` is the conditional write: atomically, if the key's
  live value is ``expected`` (None: no live value) it becomes ``new`` (None: deleted) and the
  call returns True; otherwise nothing changes and it returns False. ``expected`` is bytes the
  caller read from this store (``get`` or ``scan``), which match for as long as the value is
  unchanged (PostgreSQL compares jsonb documents, so other spellings match there too). Of many
  concurrent calls from one ``expected`` value exactly one wins, across processes too. It keeps
  session heads, counts and deletions exact under concurrent writers without locks: read,
  compute the new value, compare-and-set, and read again on False.
* ``ttl`` is in seconds, more than 0 and at most ``MAX_TTL`` (100 years: every store can keep
  that deadline, where MongoDB's dates end in year 9999 and PostgreSQL's intervals earlier); a
  larger one is ``InvalidValueError`` on every store, before anything is sent. An expired key
  is invisible to ``get``, ``get_many``, ``scan``, ``delete``, ``put_if_absent`` and
  ``compare_and_set`` at once, whenever the store really removes it.
* A value read back decodes to a JSON value equal to the one written (JSONB and BSON may change
  key order and whitespace, nothing else).
* Bad input raises a ``KVSessionsError`` before anything is sent, and changes nothing stored;
  driver failures are mapped to the same tree here, once, keeping the original as ``__cause__``
  (unless its text holds a secret). A failed write is never swallowed.
* A client handed in by the caller is never closed by the store.

Public methods here do the checking, lazy opening and error mapping once; an adapter fills the
private hooks (``_open``, ``_close``, ``_get``, ``_put``, ``_delete``, ``_put_if_absent``,
``_compare_and_set``, ``_scan_page`` and, where the store does better than one call per key,
the batch hooks).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self, TypeVar

from kvsessions.errors import (
    InvalidValueError,
    KVSessionsError,
    StoreError,
    StoreUnavailableError,
)
from kvsessions.kv.loops import PerLoop
from kvsessions.kv.text_search import Accept, TextHit, TextIndex, query_words, scan_search
from kvsessions.kv.values import check_key, check_prefix, check_written, prefix_upper_bound
from kvsessions.urls import check_namespace

__all__ = ["DEFAULT_NAMESPACE", "MAX_TTL", "KVStore", "KeyRange", "expires_at",
           "outlive_cancellation"]

logger = logging.getLogger("kvsessions")

DEFAULT_NAMESPACE = "kvsessions"
#: The longest ``ttl`` (seconds) any store accepts: 100 years of 365 days.
MAX_TTL = 100 * 365 * 86_400

_NEW, _OPEN, _CLOSED = "new", "open", "closed"


@dataclass(frozen=True, slots=True)
class KeyRange:
    """Keys ``k`` with ``lower <= k`` (``lower < k`` unless ``lower_inclusive``) and
    ``k < upper`` (no upper bound when ``upper`` is None): what one scan page may return."""

    lower: str
    lower_inclusive: bool
    upper: str | None

    def __contains__(self, key: object) -> bool:
        assert isinstance(key, str)
        if key < self.lower or (key == self.lower and not self.lower_inclusive):
            return False
        return self.upper is None or key < self.upper


#: Reads one page of a key range: (items, the last key examined, or None at the range's end).
PageReader = Callable[[KeyRange, bool, int],
                      Awaitable[tuple[list[tuple[str, bytes]], str | None]]]


def expires_at(ttl: float | None) -> float | None:
    """Absolute expiry (Unix time) for a ``ttl`` in seconds."""
    return None if ttl is None else time.time() + ttl


_T = TypeVar("_T")
_P = TypeVar("_P")


async def outlive_cancellation(write: Awaitable[_T]) -> _T:
    """Await a write; a cancelled caller waits for the write's outcome before the cancellation
    is raised. Once a write has left the client (a request on the wire, a job on a thread), the
    server or thread applies it whatever the caller does, and could apply it after the caller's
    next write of the same key, bringing back the value that one replaced. A second
    cancellation stops the waiting."""
    task = asyncio.ensure_future(write)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait([task])
        if not task.cancelled():
            task.exception()  # retrieved: the caller sees the cancellation
        raise


def _check_ttl(ttl: object) -> float | None:
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not math.isfinite(ttl):
        raise InvalidValueError(f"ttl must be a finite number of seconds, not {ttl!r}")
    if ttl <= 0:
        raise InvalidValueError(f"ttl must be > 0 seconds, not {ttl!r}")
    if ttl > MAX_TTL:
        raise InvalidValueError(f"ttl must be at most {MAX_TTL} seconds (100 years), not {ttl!r}")
    return float(ttl)


@asynccontextmanager
async def closed_after(pages: AsyncIterator[_P]) -> AsyncIterator[AsyncIterator[_P]]:
    """``pages`` (a scan's generator), closed when the block ends: a scan left early (a limit
    met, a caller that has enough) is closed at once, not by the garbage collector's
    finalizer, which costs a task per generator (a tenth of a short read's time)."""
    try:
        yield pages
    finally:
        close = getattr(pages, "aclose", None)
        if close is not None:
            await close()


class KVStore(ABC):
    """Base of every store and store wrapper. See the module docstring for the contract."""

    #: How many documents one scan page fetches.
    scan_batch_size: int = 500
    #: False: ``open()`` refuses (``ConfigError``) a server store whose table or collection
    #: does not exist, instead of creating it: for commands that only read. (An embedded
    #: store's file or folder is looked at before opening: ``kvsessions.cli.existing``.)
    create_missing: bool = True
    #: A store whose driver's clients belong to one event loop keeps them here, one per loop
    #: (``kv.loops``); ``_ready`` makes the calling loop's before each operation.
    _per_loop: PerLoop[Any] | None = None
    #: Whether event loops in several threads may use this store at the same time (every
    #: store may be used from one loop after another). False: a second loop that calls
    #: while the first one runs gets ``EventLoopError``.
    loops_at_once: bool = True

    def __init__(self, *, namespace: str = DEFAULT_NAMESPACE) -> None:
        self.namespace = check_namespace(namespace)
        self._state = _NEW
        #: Guards ``_opening``: opens may come from several event loops (threads) at once, so
        #: no asyncio lock (it belongs to one loop) and nothing held across an await.
        self._open_guard = threading.Lock()
        #: Set while one caller runs ``_open``; the others, in any loop, wait for it.
        self._opening: concurrent.futures.Future[None] | None = None
        #: Strings that must never appear in an error message (passwords).
        self._secrets: tuple[str, ...] = ()

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> Self:
        """Connect and create what the store needs (tables, indexes). Idempotent, and safe
        from several event loops and threads at once: one caller opens, the others wait."""
        while self._state != _OPEN:
            with self._open_guard:
                opening = self._opening
                if opening is None:
                    self._opening = concurrent.futures.Future()
            if opening is not None:
                await asyncio.shield(asyncio.wrap_future(opening))
                continue  # open now, or that attempt failed and this caller tries itself
            try:
                await self._open()
            except Exception as exc:
                error = self._map_error(exc, "open")
            else:
                self._state = _OPEN
                return self
            finally:
                with self._open_guard:
                    done, self._opening = self._opening, None
                assert done is not None
                done.set_result(None)
            raise error
        return self

    async def close(self) -> None:
        """Release connections this store made. A client passed in by the caller stays open."""
        if self._state == _OPEN:
            self._state = _CLOSED
            await self._close()
        else:
            self._state = _CLOSED

    async def __aenter__(self) -> Self:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _ready(self) -> None:
        if self._state != _OPEN:
            if self._state == _CLOSED:
                raise StoreError(f"{self!r} is closed")
            await self.open()
        if self._per_loop is not None and not self._per_loop.made():
            try:
                await self._per_loop.get()
            except Exception as exc:
                error = self._map_error(exc, "open")
            else:
                return
            raise error

    # ------------------------------------------------------------------ single keys

    async def get(self, key: str) -> bytes | None:
        """The value stored under ``key``, or None when there is none (or it expired)."""
        check_key(key)
        await self._ready()
        try:
            return await self._get(key)
        except Exception as exc:
            error = self._map_error(exc, "get")
        raise error

    async def put(self, key: str, value: bytes, *, ttl: float | None = None) -> None:
        """Store ``value`` under ``key``, replacing what was there, atomically."""
        check_key(key)
        check_written(value, key=key)
        ttl = _check_ttl(ttl)
        await self._ready()
        try:
            await self._put(key, bytes(value), ttl)
            return
        except Exception as exc:
            error = self._map_error(exc, "put")
        raise error

    async def delete(self, key: str) -> bool:
        """Remove ``key``; True if a live value was there."""
        check_key(key)
        await self._ready()
        try:
            return await self._delete(key)
        except Exception as exc:
            error = self._map_error(exc, "delete")
        raise error

    async def put_if_absent(self, key: str, value: bytes, *, ttl: float | None = None) -> bool:
        """Store ``value`` only if ``key`` has no live value; True if this call stored it."""
        check_key(key)
        check_written(value, key=key)
        ttl = _check_ttl(ttl)
        await self._ready()
        try:
            return await self._put_if_absent(key, bytes(value), ttl)
        except Exception as exc:
            error = self._map_error(exc, "put_if_absent")
        raise error

    async def compare_and_set(
        self, key: str, expected: bytes | None, new: bytes | None, *, ttl: float | None = None
    ) -> bool:
        """Atomically: if ``key``'s live value is ``expected`` (None: there is none), store
        ``new`` (None: delete the key) with ``ttl`` and return True; else change nothing and
        return False. ``expected`` is a value read from this store."""
        check_key(key)
        expected, new = _check_swap(key, expected, new)
        ttl = _check_ttl(ttl)
        if new is None and ttl is not None:
            raise InvalidValueError("a ttl needs a value: compare_and_set with new=None "
                                    "deletes the key", key=key)
        await self._ready()
        try:
            return await self._compare_and_set(key, expected, new, ttl)
        except Exception as exc:
            error = self._map_error(exc, "compare_and_set")
        raise error

    @property
    def atomic_compare_and_set_with(self) -> bool:
        """Whether ``compare_and_set_with`` is one atomic transaction on this store."""
        return self._atomic_compare_and_set_with

    #: Adapters whose ``_compare_and_set_with`` is one transaction set this to True.
    _atomic_compare_and_set_with: bool = False

    def atomic_with(self, key: str, others: Iterable[str]) -> bool:
        """Whether ``compare_and_set_with`` on ``key`` changes each of ``others`` in the one
        transaction that changes ``key``: always where ``atomic_compare_and_set_with`` is
        True; a store atomic within part of its keys (a Redis Cluster slot) says so for the
        keys given."""
        return self.atomic_compare_and_set_with

    async def compare_and_set_with(
        self, key: str, expected: bytes | None, new: bytes | None, *,
        create: Iterable[tuple[str, bytes]] = (), put: Iterable[tuple[str, bytes]] = (),
        delete: Iterable[str] = (), swap: Iterable[tuple[str, bytes, bytes | None]] = (),
    ) -> bool:
        """``compare_and_set(key, expected, new)`` together with writes of other keys (no
        ttl; every key named once): the items of ``create``, which must all be absent (else
        the call is a failed compare), the items of ``put``, the removal of ``delete``, and
        for each ``(other, read, value)`` of ``swap`` a compare-and-set of ``other`` from
        ``read`` (a value read from this store) to ``value`` (None: delete it), which must
        match too (else the call is a failed compare).
        Where ``atomic_compare_and_set_with`` is True it is one transaction: everything, or
        nothing and False. Elsewhere (the default) the writes come in the order an index
        needs without transactions: ``create``, then ``swap`` (both undone on failure, as
        far as nobody changed them since), ``put`` (stored whatever the outcome), the
        compare-and-set, then, only if it succeeded, ``delete``; the keys for which
        ``atomic_with`` is True change in the one transaction of the compare-and-set."""
        check_key(key)
        expected, new = _check_swap(key, expected, new)
        made = _checked_items(create, "create")
        items = _checked_items(put, "put")
        removed = list(dict.fromkeys(check_key(other) for other in _iterable(delete, "delete")))
        swaps = _checked_swaps(swap)
        named = [key, *made, *items, *removed, *swaps]
        if len(set(named)) != len(named):
            raise InvalidValueError("compare_and_set_with names each key once: the key, the "
                                    "keys created, put, deleted and swapped may not overlap",
                                    key=key)
        await self._ready()
        try:
            return await self._compare_and_set_with(
                key, expected, new, list(made.items()), list(items.items()), removed,
                [(other, read, value) for other, (read, value) in swaps.items()])
        except Exception as exc:
            error = self._map_error(exc, "compare_and_set_with")
        raise error

    # ------------------------------------------------------------------ batches

    async def get_many(self, keys: Iterable[str]) -> list[bytes | None]:
        """Values for ``keys``, in the same order (None where missing)."""
        key_list = [check_key(key) for key in _iterable(keys, "keys")]
        if not key_list:
            return []
        await self._ready()
        try:
            return await self._get_many(key_list)
        except Exception as exc:
            error = self._map_error(exc, "get_many")
        raise error

    async def put_many(
        self, items: Iterable[tuple[str, bytes]], *, ttl: float | None = None
    ) -> None:
        """Store many values (in one transaction or pipeline where the store has one). Every
        item is checked before anything is written; of repeated keys the last one wins."""
        batch: dict[str, bytes] = {}
        for item in _iterable(items, "items"):
            if not isinstance(item, tuple) or len(item) != 2:
                raise InvalidValueError(f"put_many takes (key, value) pairs, not {item!r:.60}")
            key, value = item
            check_key(key)
            check_written(value, key=key)
            batch[key] = bytes(value)
        ttl = _check_ttl(ttl)
        if not batch:
            return
        await self._ready()
        try:
            await self._put_many(list(batch.items()), ttl)
            return
        except Exception as exc:
            error = self._map_error(exc, "put_many")
        raise error

    async def delete_many(self, keys: Iterable[str]) -> int:
        """Remove ``keys``; the number of live values removed."""
        key_list = list(dict.fromkeys(check_key(key) for key in _iterable(keys, "keys")))
        if not key_list:
            return 0
        await self._ready()
        try:
            return await self._delete_many(key_list)
        except Exception as exc:
            error = self._map_error(exc, "delete_many")
        raise error

    # ------------------------------------------------------------------ ordered scan

    async def scan(
        self,
        prefix: str = "",
        *,
        start_after: str | None = None,
        limit: int | None = None,
        reverse: bool = False,
    ) -> AsyncIterator[tuple[str, bytes]]:
        """``(key, value)`` pairs whose key starts with ``prefix``, in key order."""
        async with closed_after(self.scan_pages(prefix, start_after=start_after, limit=limit,
                                            reverse=reverse)) as pages:
            async for page in pages:
                for item in page:
                    yield item

    async def scan_pages(
        self,
        prefix: str = "",
        *,
        start_after: str | None = None,
        limit: int | None = None,
        reverse: bool = False,
    ) -> AsyncIterator[list[tuple[str, bytes]]]:
        """The same scan as ``scan``, a page (a non-empty list) at a time: for readers that
        handle many documents, which then pay the iteration cost per page, not per item."""
        check_prefix(prefix)
        if start_after is not None:
            check_prefix(start_after, what="start_after")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                                  or limit < 0):
            raise InvalidValueError(f"limit must be a whole number >= 0 or None, not {limit!r}")
        key_range = _scan_range(prefix, start_after, reverse)
        if key_range is None or limit == 0:
            return
        await self._ready()
        remaining = limit
        try:
            async with closed_after(self._scan(key_range, reverse, limit)) as pages:
                async for page in pages:
                    if remaining is not None:
                        if len(page) >= remaining:
                            yield page[:remaining]
                            return
                        remaining -= len(page)
                    yield page
        except Exception as exc:
            error = self._map_error(exc, "scan")
        else:
            return
        raise error

    async def keys(self, prefix: str = "", *, reverse: bool = False) -> list[str]:
        """All keys under ``prefix`` in order (a convenience for small namespaces and tests)."""
        return [key async for key, _ in self.scan(prefix, reverse=reverse)]

    async def get_and_last(self, key: str,
                           prefix: str) -> tuple[bytes | None, tuple[str, bytes] | None]:
        """``get(key)`` and the last item of ``scan(prefix)`` (None: there is none), as a
        writer reads a record and the latest of its items before changing both: one round
        trip where the adapter has one (``_get_and_last``), else the two reads concurrently."""
        check_key(key)
        key_range = _scan_range(check_prefix(prefix), None, True)
        assert key_range is not None  # a prefix alone never makes an empty range
        await self._ready()
        try:
            return await self._get_and_last(key, key_range)
        except Exception as exc:
            error = self._map_error(exc, "get_and_last")
        raise error

    async def _get_and_last(self, key: str, key_range: KeyRange
                            ) -> tuple[bytes | None, tuple[str, bytes] | None]:
        """Adapter hook: ``get_and_last`` of the reverse scan's ``key_range``."""
        async def last() -> tuple[str, bytes] | None:
            async with closed_after(self._scan(key_range, True, 1)) as pages:
                async for page in pages:
                    return page[0]
            return None

        value, item = await asyncio.gather(self._get(key), last())
        return value, item

    async def _scan(
        self, key_range: KeyRange, reverse: bool, limit: int | None = None
    ) -> AsyncIterator[list[tuple[str, bytes]]]:
        """Pages of a scan, by keyset pagination over ``_scan_page``. ``limit`` is a hint: the
        caller stops after that many items, so no page needs to be larger."""
        async with closed_after(self._keyset_pages(self._scan_page, key_range, reverse,
                                               limit)) as pages:
            async for page in pages:
                yield page

    async def _keyset_pages(
        self, read_page: PageReader, key_range: KeyRange, reverse: bool, limit: int | None
    ) -> AsyncIterator[list[tuple[str, bytes]]]:
        """Pages of ``key_range`` from ``read_page`` (one page and the last key it examined,
        None at the end), each next page starting after that key: keyset pagination."""
        remaining = limit
        while True:
            size = self.scan_batch_size if remaining is None else min(self.scan_batch_size,
                                                                       remaining)
            items, last_examined = await read_page(key_range, reverse, size)
            if items:
                yield items
                if remaining is not None:
                    remaining -= len(items)
                    if remaining <= 0:
                        return
            if last_examined is None:
                return
            if reverse:
                key_range = KeyRange(key_range.lower, key_range.lower_inclusive, last_examined)
            else:
                key_range = KeyRange(last_examined, False, key_range.upper)

    async def upgrade_layout(self) -> int:
        """Move what an earlier release of this adapter stored in an older layout of its own
        (not the documents: ``kvsessions upgrade`` does those) to the current one; the number
        of keys moved. Adapters whose layout never changed move nothing."""
        await self._ready()
        return 0

    # ------------------------------------------------------------------ text search

    #: How this store searches text: "scan" (``kv.text_search.scan_search``) or the name of
    #: its native index.
    text_search: str = "scan"

    async def search_text(
        self,
        index: TextIndex,
        query: str,
        *,
        within: str | None = None,
        limit: int = 20,
        accept: Accept | None = None,
    ) -> list[TextHit]:
        """Documents under ``index.prefix`` (and under ``within``, a longer prefix, when
        given) whose ``index.field`` holds every word of ``query``, best first, at most
        ``limit``; ``accept(key, value)`` may refuse hits. The store's native index is made
        on first use (see ``kv.text_search``)."""
        terms = query_words(query)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise InvalidValueError(f"limit must be a whole number from 1 to 1000, not {limit!r}")
        within = index.prefix if within is None else check_prefix(within, what="within")
        if not within.startswith(index.prefix):
            raise InvalidValueError(f"within={within!r} is not under the index's prefix "
                                    f"{index.prefix!r}")
        await self._ready()
        try:
            return await self._search_text(index, terms, within, limit, accept)
        except Exception as exc:
            error = self._map_error(exc, "search_text")
        raise error

    async def _search_text(self, index: TextIndex, terms: list[str], within: str, limit: int,
                           accept: Accept | None) -> list[TextHit]:
        """Adapter hook: the native search, or (here) the scan."""
        return await scan_search(self, index, terms, within, limit, accept)

    # ------------------------------------------------------------------ hooks

    @abstractmethod
    async def _open(self) -> None: ...

    @abstractmethod
    async def _close(self) -> None: ...

    @abstractmethod
    async def _get(self, key: str) -> bytes | None: ...

    @abstractmethod
    async def _put(self, key: str, value: bytes, ttl: float | None) -> None: ...

    @abstractmethod
    async def _delete(self, key: str) -> bool: ...

    @abstractmethod
    async def _put_if_absent(self, key: str, value: bytes, ttl: float | None) -> bool: ...

    @abstractmethod
    async def _compare_and_set(
        self, key: str, expected: bytes | None, new: bytes | None, ttl: float | None
    ) -> bool:
        """The atomic step of ``compare_and_set``, arguments checked; expired values count as
        absent. Every adapter implements it: no generic read-then-write would be atomic."""

    @abstractmethod
    async def _scan_page(
        self, key_range: KeyRange, reverse: bool, limit: int
    ) -> tuple[list[tuple[str, bytes]], str | None]:
        """Up to ``limit`` live items in ``key_range`` in order, and the last key examined
        (None when the range holds nothing more, so the scan stops)."""

    async def _compare_and_set_with(self, key: str, expected: bytes | None,
                                    new: bytes | None, create: list[tuple[str, bytes]],
                                    put: list[tuple[str, bytes]], delete: list[str],
                                    swap: list[tuple[str, bytes, bytes | None]]) -> bool:
        """Not atomic (see ``compare_and_set_with``); adapters with transactions override
        this and set ``_atomic_compare_and_set_with``."""
        made: list[str] = []
        moved: list[tuple[str, bytes, bytes | None]] = []
        swapped = False
        try:
            for other, value in create:
                if not await self._put_if_absent(other, value, None):
                    return False
                made.append(other)
            for other, read, after in swap:
                if not await self._compare_and_set(other, read, after, None):
                    return False
                moved.append((other, read, after))
            if put:
                await self._put_many(put, None)
            swapped = await self._compare_and_set(key, expected, new, None)
        finally:
            if not swapped:
                for other, read, after in reversed(moved):
                    await self._compare_and_set(other, after, read, None)
                if made:
                    await self._delete_many(made)
        if swapped and delete:
            await self._delete_many(delete)
        return swapped

    async def _get_many(self, keys: list[str]) -> list[bytes | None]:
        return [await self._get(key) for key in keys]

    async def _put_many(self, items: list[tuple[str, bytes]], ttl: float | None) -> None:
        for key, value in items:
            await self._put(key, value, ttl)

    async def _delete_many(self, keys: list[str]) -> int:
        count = 0
        for key in keys:
            count += await self._delete(key)
        return count

    @staticmethod
    def _page(
        rows: Sequence[tuple[str, bytes]], limit: int
    ) -> tuple[list[tuple[str, bytes]], str | None]:
        """Result of ``_scan_page`` for stores whose page query returns only live rows."""
        items = list(rows)
        return items, (items[-1][0] if len(items) >= limit else None)

    # ------------------------------------------------------------------ errors

    def _classify_error(self, exc: Exception) -> type[KVSessionsError] | None:
        """Adapter hook: the error class for a driver exception (None: use the default)."""
        return None

    def _map_error(self, exc: Exception, operation: str) -> KVSessionsError:
        """Turn any exception into one of ours, once, without leaking secrets."""
        if isinstance(exc, KVSessionsError):
            return exc
        cls = self._classify_error(exc)
        if cls is None:
            unavailable = isinstance(exc, OSError | TimeoutError | ConnectionError)
            cls = StoreUnavailableError if unavailable else StoreError
        detail = self._scrub(f"{type(exc).__name__}: {exc}")
        if cls is StoreUnavailableError:
            message = f"{operation} failed: {self!r} is unavailable ({detail})"
        else:
            message = f"{operation} failed on {self!r}: {detail}"
        error = cls(message)
        leaky = any(secret in _exception_text(exc) for secret in self._secrets)
        error.__cause__ = None if leaky else exc
        error.__suppress_context__ = True
        if cls is StoreUnavailableError:
            # The error is raised to the caller; the log is for tracing, not a second report.
            logger.debug("%s", message)
        return error

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def __repr__(self) -> str:
        return f"{type(self).__name__}(namespace={self.namespace!r})"


def _exception_text(exc: BaseException) -> str:
    parts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        parts.append(repr(current))
        parts.append(str(current))
        parts.extend(str(arg) for arg in current.args)
        current = current.__cause__ or current.__context__
    return "\n".join(parts)


def _scan_range(prefix: str, start_after: str | None, reverse: bool) -> KeyRange | None:
    """The key range a scan covers, or None when it is empty."""
    upper = prefix_upper_bound(prefix)
    if start_after is None:
        return KeyRange(prefix, True, upper)
    if reverse:
        if start_after <= prefix:
            return None
        if upper is None or start_after < upper:
            upper = start_after
        return KeyRange(prefix, True, upper)
    if upper is not None and start_after >= upper:
        return None
    if start_after < prefix:
        return KeyRange(prefix, True, upper)
    return KeyRange(start_after, False, upper)


def _check_swap(key: str, expected: object, new: object) -> tuple[bytes | None, bytes | None]:
    """The ``expected`` and ``new`` of a compare-and-set, checked, as bytes."""
    if expected is not None and not isinstance(expected, bytes | bytearray | memoryview):
        raise InvalidValueError(f"expected must be bytes read from the store or None, not "
                                f"{type(expected).__name__}", key=key)
    if new is not None:
        check_written(new, key=key)
        assert isinstance(new, bytes | bytearray | memoryview)
    return (None if expected is None else bytes(expected), None if new is None else bytes(new))


def _checked_swaps(items: object) -> dict[str, tuple[bytes, bytes | None]]:
    """``compare_and_set_with``'s ``swap``: (key, value read, new value or None) triples."""
    checked: dict[str, tuple[bytes, bytes | None]] = {}
    for item in _iterable(items, "swap"):
        if not isinstance(item, tuple) or len(item) != 3:
            raise InvalidValueError(f"swap takes (key, expected, new) triples, not {item!r:.60}")
        key, expected, new = item
        check_key(key)
        read, value = _check_swap(key, expected, new)
        if read is None:
            raise InvalidValueError("swap compares with a value read from the store (create "
                                    "names the keys that must be absent)", key=key)
        if key in checked:
            raise InvalidValueError("swap names the key twice", key=key)
        checked[key] = (read, value)
    return checked


def _checked_items(items: object, what: str) -> dict[str, bytes]:
    checked: dict[str, bytes] = {}
    for item in _iterable(items, what):
        if not isinstance(item, tuple) or len(item) != 2:
            raise InvalidValueError(f"{what} takes (key, value) pairs, not {item!r:.60}")
        key, value = item
        check_key(key)
        check_written(value, key=key)
        if key in checked:
            raise InvalidValueError(f"{what} names the key twice", key=key)
        checked[key] = bytes(value)
    return checked


def _iterable(value: object, what: str) -> Iterable[object]:
    if type(value) is list or type(value) is tuple:  # the usual case, without the ABC check
        return value
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise InvalidValueError(f"{what} must be an iterable of items, not {type(value).__name__}")
    return value
