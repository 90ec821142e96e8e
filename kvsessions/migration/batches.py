"""A store's documents as ordered batches, read ahead of whoever consumes them: the stream that
copy, verify, export, validate and upgrade are built on.

The batches never hold reserved keys (``__kvsessions__:``, kvsessions' own bookkeeping such as
migration checkpoints): they are not documents, so no command copies, compares or exports them.
"""

from __future__ import annotations

import asyncio
import bisect
import inspect
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, TypeVar

from kvsessions.errors import InvalidValueError
from kvsessions.kv.base import KVStore
from kvsessions.kv.values import RESERVED_PREFIX, prefix_upper_bound
from kvsessions.migration.checkpoint import CHECKPOINT_PREFIX

__all__ = [
    "KIND_PREFIXES",
    "SAMPLE_LIMIT",
    "ItemCursor",
    "Items",
    "MigrationProgress",
    "Prefetch",
    "ProgressCallback",
    "as_store",
    "check_batch_size",
    "count_documents",
    "count_kinds",
    "drop_reserved",
    "kind_counts",
    "report_progress",
    "scan_batches",
]


logger = logging.getLogger("kvsessions.migration")


def _upper(prefix: str) -> str:
    bound = prefix_upper_bound(prefix)
    assert bound is not None
    return bound


_RESERVED_UPPER = _upper(RESERVED_PREFIX)
#: How the result dictionaries count documents by kind (the key layout of SessionStorage).
KIND_PREFIXES = {"sessions": "session:", "messages": "message:", "files": "file:"}
_KIND_RANGES = {kind: (prefix, _upper(prefix)) for kind, prefix in KIND_PREFIXES.items()}
#: How many keys (and reasons) a result lists; the totals are always exact.
SAMPLE_LIMIT = 100
_QUEUE_DEPTH = 2

T = TypeVar("T")
Items = list[tuple[str, bytes]]
ProgressCallback = Callable[["MigrationProgress"], Awaitable[None] | None]


@dataclass(frozen=True, slots=True)
class MigrationProgress:
    """What a progress callback is told after each batch."""

    #: Documents handled so far, counting those a resumed run had copied before it started.
    documents: int
    #: Documents the checkpoint said were already copied when this run started.
    documents_before: int
    last_key: str | None
    elapsed_seconds: float
    #: Documents the whole run will handle, when known before it ends (an import knows it).
    total: int | None = None

    @property
    def documents_per_second(self) -> float:
        done = self.documents - self.documents_before
        return done / self.elapsed_seconds if self.elapsed_seconds > 0 else 0.0


async def report_progress(callback: ProgressCallback | None, progress: MigrationProgress) -> None:
    """Tell ``callback`` (a plain or an async function, or None) about ``progress``."""
    if callback is not None:
        result = callback(progress)
        if inspect.isawaitable(result):
            await result


def as_store(storage: object, role: str) -> KVStore:
    """``storage`` itself, or the ``KVStore`` in its ``.store`` (a ``SessionStorage``)."""
    if isinstance(storage, KVStore):
        return storage
    inner = getattr(storage, "store", None)
    if isinstance(inner, KVStore):
        return inner
    raise TypeError(f"{role} must be a KVStore or have a .store KVStore attribute, "
                    f"not {type(storage).__name__}")


def check_batch_size(batch_size: object, *, what: str = "batch_size") -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidValueError(f"{what} must be a whole number >= 1, not {batch_size!r}")
    return batch_size


def kind_counts() -> dict[str, int]:
    return dict.fromkeys(KIND_PREFIXES, 0)


def count_kinds(counts: dict[str, int], items: Items) -> None:
    """Add up documents by kind; ``items`` are in key order, so each kind is one range."""
    for kind, (key_prefix, upper) in _KIND_RANGES.items():
        low = bisect.bisect_left(items, key_prefix, key=_first)
        counts[kind] += bisect.bisect_left(items, upper, lo=low, key=_first) - low


def _first(item: tuple[str, bytes]) -> str:
    return item[0]


async def scan_batches(
    store: KVStore, prefix: str, start_after: str | None, size: int
) -> AsyncGenerator[Items, None]:
    """The store's documents under ``prefix`` in key order, in lists of ``size``, without the
    reserved keys."""
    pending: Items = []
    async for page in store.scan_pages(prefix, start_after=start_after):
        pending.extend(page)
        if len(pending) < size:
            continue
        drop_reserved(pending)
        while len(pending) >= size:
            yield pending[:size]
            pending = pending[size:]
    drop_reserved(pending)
    if pending:
        yield pending


def drop_reserved(batch: Items) -> None:
    """Remove reserved keys from a sorted batch (one contiguous range). Keys there that are no
    checkpoint can only have been written by a release that did not refuse them yet: say so,
    since they are left out."""
    low = bisect.bisect_left(batch, RESERVED_PREFIX, key=_first)
    if low == len(batch) or not batch[low][0].startswith(RESERVED_PREFIX):
        return
    high = bisect.bisect_left(batch, _RESERVED_UPPER, lo=low, key=_first)
    foreign = [key for key, _ in batch[low:high] if not key.startswith(CHECKPOINT_PREFIX)]
    if foreign:
        logger.warning("left out %d key(s) under the reserved prefix %r that are not "
                       "kvsessions' own, such as %r (written by an older release?)",
                       len(foreign), RESERVED_PREFIX, foreign[0][:80])
    del batch[low:high]


async def count_documents(storage: Any, *, prefix: str = "") -> int:
    """How many documents (reserved keys aside) the store holds under ``prefix``."""
    store = as_store(storage, "storage")
    total = 0
    async for batch in scan_batches(store, prefix, None, 1000):
        total += len(batch)
    return total


class Prefetch(Generic[T]):
    """Runs an async iterator ahead of its consumer in a task, ``depth`` items ahead at most,
    so reading the next batch overlaps with whatever the consumer awaits."""

    def __init__(self, source: AsyncIterator[T], depth: int = _QUEUE_DEPTH) -> None:
        self._source = source
        self._queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue(maxsize=depth)
        self._task: asyncio.Task[None] | None = None
        self._finished = False

    async def _pump(self) -> None:
        try:
            async for item in self._source:
                await self._queue.put((0, item))
        except Exception as exc:
            await self._queue.put((2, exc))
        else:
            await self._queue.put((1, None))
        finally:
            aclose = getattr(self._source, "aclose", None)
            if aclose is not None:
                await aclose()

    async def __aenter__(self) -> Prefetch[T]:
        self._task = asyncio.create_task(self._pump())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise

    def __aiter__(self) -> Prefetch[T]:
        return self

    async def __anext__(self) -> T:
        if self._finished:
            raise StopAsyncIteration
        tag, payload = await self._queue.get()
        if tag == 0:
            item: T = payload
            return item
        self._finished = True
        if tag == 1:
            raise StopAsyncIteration
        raise payload


class ItemCursor:
    """One item at a time out of a prefetched stream of batches (for the merge-join)."""

    def __init__(self, batches: Prefetch[Items]) -> None:
        self._batches = batches
        self._batch: Items = []
        self._index = 0
        self.count = 0

    async def next(self) -> tuple[str, bytes] | None:
        if self._index >= len(self._batch):
            try:
                self._batch = await self._batches.__anext__()
            except StopAsyncIteration:
                return None
            self._index = 0
        item = self._batch[self._index]
        self._index += 1
        self.count += 1
        return item
