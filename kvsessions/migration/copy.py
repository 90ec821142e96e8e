"""Migration on the KV level: copy, verify, export, import, back up, validate and upgrade a store.

Everything here works on any ``KVStore`` (or anything with a ``.store`` attribute holding one,
such as ``SessionStorage``) and streams: an ordered scan of the source in batches, never the
whole store in memory.

``migrate_storage`` reads the next batch while the last one is being written (a background task
and a queue of depth 2). Resuming rests on a checkpoint kept in the destination under the
reserved key ``__kvsessions__:migrate:<hash of the prefix>``. Keys under ``__kvsessions__:`` are
never user data: migrate, verify and export skip them. The checkpoint names the last key of a
batch whose ``put_many`` has already returned, and it travels inside the *next* batch's
``put_many``, so it never runs ahead of the data on any store, atomic batches or not. A killed
run resumes after it and copies at most one batch again (puts overwrite, so nothing is
duplicated). A run that finishes deletes its checkpoint, so the next run copies everything again.

Documents that fail validation (or cannot be upgraded) are copied unchanged and reported in
``invalid_documents`` / ``invalid``: a migration never drops data on its own. Expiry times (ttl)
are not copied: the KV contract has no way to read them.
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import inspect
import logging
import math
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, TypeVar

import orjson

from kvsessions.errors import ConfigError, InvalidValueError, KVSessionsError
from kvsessions.kv.base import KVStore
from kvsessions.kv.values import check_prefix, prefix_upper_bound
from kvsessions.migration.jsonl import ExportFileError, ExportReader, ExportWriter

__all__ = [
    "CHECKPOINT_PREFIX",
    "KIND_PREFIXES",
    "RESERVED_PREFIX",
    "ExportFileError",
    "MigrationProgress",
    "backup_storage",
    "checkpoint_key",
    "count_documents",
    "export_to_json",
    "import_from_json",
    "migrate_storage",
    "upgrade_storage",
    "validate_storage",
    "verify_migration",
]

logger = logging.getLogger("kvsessions.migration.copy")

#: Keys under this prefix belong to kvsessions itself (checkpoints), never to user data.
RESERVED_PREFIX = "__kvsessions__:"
CHECKPOINT_PREFIX = RESERVED_PREFIX + "migrate:"

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
#: Batches timed with one, then with two writes in flight, when concurrency is automatic.
_TRIAL = 4

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

    @property
    def documents_per_second(self) -> float:
        done = self.documents - self.documents_before
        return done / self.elapsed_seconds if self.elapsed_seconds > 0 else 0.0


def checkpoint_key(prefix: str = "") -> str:
    """The reserved key holding the checkpoint of a migration of ``prefix``."""
    return CHECKPOINT_PREFIX + hashlib.sha256(prefix.encode("utf-8")).hexdigest()[:16]


def _as_store(storage: object, role: str) -> KVStore:
    if isinstance(storage, KVStore):
        return storage
    inner = getattr(storage, "store", None)
    if isinstance(inner, KVStore):
        return inner
    raise TypeError(f"{role} must be a KVStore or have a .store KVStore attribute, "
                    f"not {type(storage).__name__}")


def _check_batch_size(batch_size: object) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidValueError(f"batch_size must be a whole number >= 1, not {batch_size!r}")
    return batch_size


def _kind_counts() -> dict[str, int]:
    return dict.fromkeys(KIND_PREFIXES, 0)


def _count_kinds(counts: dict[str, int], items: Items) -> None:
    """Add up documents by kind; ``items`` are in key order, so each kind is one range."""
    for kind, (key_prefix, upper) in _KIND_RANGES.items():
        low = bisect.bisect_left(items, key_prefix, key=_first)
        counts[kind] += bisect.bisect_left(items, upper, lo=low, key=_first) - low


def _first(item: tuple[str, bytes]) -> str:
    return item[0]


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


async def _call(callback: ProgressCallback | None, progress: MigrationProgress) -> None:
    if callback is not None:
        result = callback(progress)
        if inspect.isawaitable(result):
            await result


# ---------------------------------------------------------------------- streaming helpers


async def _scan_batches(
    store: KVStore, prefix: str, start_after: str | None, size: int
) -> AsyncGenerator[Items, None]:
    """The store's documents under ``prefix`` in key order, in lists of ``size``, without the
    reserved keys."""
    pending: Items = []
    async for page in store.scan_pages(prefix, start_after=start_after):
        pending.extend(page)
        if len(pending) < size:
            continue
        _drop_reserved(pending)
        while len(pending) >= size:
            yield pending[:size]
            pending = pending[size:]
    _drop_reserved(pending)
    if pending:
        yield pending


def _drop_reserved(batch: Items) -> bool:
    """Remove reserved keys from a sorted batch (one contiguous range); True if any were."""
    low = bisect.bisect_left(batch, RESERVED_PREFIX, key=_first)
    if low == len(batch) or not batch[low][0].startswith(RESERVED_PREFIX):
        return False
    high = bisect.bisect_left(batch, _RESERVED_UPPER, lo=low, key=_first)
    del batch[low:high]
    return True


class _Prefetch(Generic[T]):
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

    async def __aenter__(self) -> _Prefetch[T]:
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

    def __aiter__(self) -> _Prefetch[T]:
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


class _Items:
    """One item at a time out of a prefetched stream of batches (for the merge-join)."""

    def __init__(self, batches: _Prefetch[Items]) -> None:
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


# ---------------------------------------------------------------------- document checks


class _DocumentCheck:
    """Optional upcasting and schema validation of documents on their way through."""

    def __init__(self, *, validate: bool, upgrade: bool) -> None:
        self.validate = validate
        self.upgrade = upgrade
        self.invalid_count = 0
        self.invalid: list[dict[str, str]] = []
        self.upgraded = 0
        self.outdated = 0
        self._validate_document: Callable[..., None] | None = None
        self._upgrade_document: Callable[..., dict[str, Any]] | None = None
        self._current_versions: dict[str, int] = {}
        if validate:
            from kvsessions.documents.validation import validate_document

            self._validate_document = validate_document
        if upgrade:
            from kvsessions.documents.codec import upgrade_document

            self._upgrade_document = upgrade_document

    @property
    def active(self) -> bool:
        return self.validate or self.upgrade

    def _record(self, key: str, exc: Exception) -> None:
        self.invalid_count += 1
        if len(self.invalid) < SAMPLE_LIMIT:
            reason = str(exc) or type(exc).__name__
            self.invalid.append({"key": key, "error": reason[:300]})

    def process(self, items: Items) -> Items:
        """The items to write: upgraded where asked; invalid ones recorded, kept unchanged."""
        if not self.active:
            return items
        out: Items = []
        for key, value in items:
            try:
                document = orjson.loads(value)
                if self._upgrade_document is not None:
                    upgraded = self._upgrade_document(document, key=key)
                    if upgraded is not document and upgraded != document:
                        value = orjson.dumps(upgraded)
                        document = upgraded
                        self.upgraded += 1
                if self._validate_document is not None:
                    self._validate_document(document, key=key)
            except (KVSessionsError, orjson.JSONDecodeError, ValueError, KeyError,
                    TypeError) as exc:
                self._record(key, exc)
            out.append((key, value))
        return out

    def note_outdated(self, items: Items) -> None:
        """Count documents older than the newest version of their kind (for ``validate``)."""
        if not self._current_versions:
            from kvsessions.documents.codec import CURRENT_VERSIONS

            self._current_versions = dict(CURRENT_VERSIONS)
        for _, value in items:
            try:
                document = orjson.loads(value)
            except orjson.JSONDecodeError:
                continue
            current = self._current_versions.get(document.get("kind"))
            version = document.get("v")
            if current is not None and isinstance(version, int) and version < current:
                self.outdated += 1

    def upgrade_for_compare(self, value: bytes, key: str) -> Any:
        document = orjson.loads(value)
        if self._upgrade_document is None:
            return document
        try:
            return self._upgrade_document(document, key=key)
        except (KVSessionsError, ValueError, KeyError, TypeError):
            return document


# ---------------------------------------------------------------------- migrate


async def migrate_storage(
    source: Any,
    destination: Any,
    *,
    verify: bool = True,
    progress_callback: ProgressCallback | None = None,
    batch_size: int = 1000,
    resume: bool = True,
    prefix: str = "",
    upgrade: bool = False,
    validate: bool = True,
    dry_run: bool = False,
    concurrency: int | None = None,
) -> dict[str, Any]:
    """Copy every document under ``prefix`` from ``source`` to ``destination`` (see the module
    docstring for resuming). ``dry_run`` reads and checks everything and writes nothing.
    ``concurrency`` batches are written at once while the scan reads ahead; None tries one and
    then two writes in flight on the first batches and keeps the faster (two help a server
    with cores to spare, such as PostgreSQL; they slow down one that shares this machine's).

    Counts are of this run (a resumed run counts from its checkpoint); ``verified`` is None when
    ``verify`` is false, else whether verify found both sides equal (details in
    ``verification``).
    """
    src = _as_store(source, "source")
    dst = _as_store(destination, "destination")
    if src is dst:
        raise ConfigError("source and destination are the same store")
    size = _check_batch_size(batch_size)
    if concurrency is not None:
        concurrency = _check_batch_size(concurrency)
    check_prefix(prefix)
    started = time.perf_counter()
    check = _DocumentCheck(validate=validate, upgrade=upgrade)
    ckey = checkpoint_key(prefix)
    identity = {"source": repr(src), "prefix": prefix, "upgrade": upgrade}

    resumed_from: str | None = None
    copied_before = 0
    stored = await dst.get(ckey)
    if stored is not None:
        state = orjson.loads(stored)
        if resume and state.get("identity") == identity and isinstance(state.get("last_key"), str):
            resumed_from = state["last_key"]
            copied_before = int(state.get("copied", 0))
            logger.info("resuming the migration after %r (%d documents copied before)",
                        resumed_from, copied_before)
        else:
            if resume:
                logger.warning("ignoring a checkpoint of another migration into %r", dst)
            if not dry_run:
                await dst.delete(ckey)

    # The checkpoint rides in each batch: read one document less, so that a put_many holds
    # exactly batch_size entries (stores that split bigger batches stay at one statement).
    read_size = size if dry_run or size == 1 else size - 1
    batches = _processed(check, _scan_batches(src, prefix, resumed_from, read_size))
    writer = _CheckpointedWriter(
        dst, ckey, identity, resumed_from, copied_before,
        writers=1 if dry_run else concurrency,
        dry_run=dry_run, progress_callback=progress_callback, started=started)
    try:
        async with _Prefetch(batches) as prefetched:
            async for batch in prefetched:
                await writer.write(batch)
            await writer.drain()
    finally:
        await writer.cancel()
    if not dry_run:
        await dst.delete(ckey)
    counts, copied = writer.counts, writer.copied

    result: dict[str, Any] = {
        "sessions_migrated": counts["sessions"],
        "files_migrated": counts["files"],
        "messages_migrated": counts["messages"],
        "documents_copied": copied,
        "documents_copied_before_resume": copied_before,
        "resumed_from": resumed_from,
        "documents_upgraded": check.upgraded,
        "validated": validate,
        "invalid_documents": check.invalid_count,
        "invalid": check.invalid,
        "dry_run": dry_run,
        "verified": None,
        "verification": None,
    }
    if verify and not dry_run:
        verification = await verify_migration(src, dst, prefix=prefix, upgrade=upgrade,
                                              batch_size=size)
        result["verified"] = verification["ok"]
        result["verification"] = verification
    result["duration_seconds"] = time.perf_counter() - started
    return result


class _CheckpointedWriter:
    """Writes batches with up to ``writers`` ``put_many`` calls in flight. The checkpoint added
    to a batch names the last key of the longest run of batches, from the start, whose writes
    had all returned when that batch was sent: whatever order the writes land in, a stored
    checkpoint is never ahead of the data (it may be behind, by the batches in flight)."""

    def __init__(self, destination: KVStore, checkpoint: str, identity: dict[str, Any],
                 resumed_from: str | None, copied_before: int, *, writers: int | None,
                 dry_run: bool,
                 progress_callback: ProgressCallback | None, started: float) -> None:
        self.destination = destination
        self.checkpoint = checkpoint
        self.identity = identity
        self.auto = writers is None
        self.writers = 1 if writers is None else writers
        self.dry_run = dry_run
        self._trial_marks: dict[int, tuple[float, int]] = {}
        self.progress_callback = progress_callback
        self.started = started
        self.copied_before = copied_before
        self.counts = _kind_counts()
        self.copied = 0  # documents whose write returned, in this run
        self._next_index = 0
        self._contiguous = -1  # every batch up to this index has been written
        self._contiguous_copied = 0
        self._done_key = resumed_from
        self._written_key = resumed_from
        self._pending: dict[int, Items] = {}
        self._finished: set[int] = set()
        self._tasks: dict[asyncio.Task[None], int] = {}

    async def write(self, batch: Items) -> None:
        while len(self._tasks) >= self.writers:
            await self._reap()
        index = self._next_index
        self._next_index += 1
        self._pending[index] = batch
        if self.dry_run:
            await self._finish(index)
            return
        items = batch
        if self._done_key is not None and self._done_key != self._written_key:
            state = {"kind": "migration-checkpoint", "last_key": self._done_key,
                     "copied": self.copied_before + self._contiguous_copied,
                     "identity": self.identity, "updated_at": _now_iso()}
            items = [*batch, (self.checkpoint, orjson.dumps(state))]
            self._written_key = self._done_key
        task = asyncio.create_task(self.destination.put_many(items))
        self._tasks[task] = index

    async def _reap(self) -> None:
        done, _ = await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            index = self._tasks.pop(task)
            task.result()  # a failed write fails the migration
            await self._finish(index)

    async def _finish(self, index: int) -> None:
        batch = self._pending[index]
        self._finished.add(index)
        self.copied += len(batch)
        _count_kinds(self.counts, batch)
        while self._contiguous + 1 in self._finished:
            self._contiguous += 1
            self._finished.discard(self._contiguous)
            done = self._pending.pop(self._contiguous)
            self._contiguous_copied += len(done)
            self._done_key = done[-1][0]
            if self.auto:
                self._tune()
        await _call(self.progress_callback, MigrationProgress(
            self.copied_before + self.copied, self.copied_before, batch[-1][0],
            time.perf_counter() - self.started))

    def _tune(self) -> None:
        """Auto concurrency: time _TRIAL batches with one write in flight, then _TRIAL with
        two, and keep the faster for the rest of the run."""
        index = self._contiguous
        if index not in (1, 1 + _TRIAL, 1 + 2 * _TRIAL):
            return
        self._trial_marks[index] = (time.perf_counter(), self._contiguous_copied)
        if index == 1 + _TRIAL:
            self.writers = 2
        elif index == 1 + 2 * _TRIAL:
            (t0, n0), (t1, n1), (t2, n2) = (self._trial_marks[i] for i in sorted(self._trial_marks))
            one = (n1 - n0) / max(t1 - t0, 1e-9)
            two = (n2 - n1) / max(t2 - t1, 1e-9)
            self.writers = 2 if two > one else 1
            logger.info("migration writes %d batch(es) at once (%.0f docs/s with one, %.0f "
                        "with two)", self.writers, one, two)

    async def drain(self) -> None:
        while self._tasks:
            await self._reap()

    async def cancel(self) -> None:
        """Stop writes still in flight (after an error or a cancellation)."""
        tasks = list(self._tasks)
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)



async def _processed(
    check: _DocumentCheck, batches: AsyncGenerator[Items, None]
) -> AsyncGenerator[Items, None]:
    try:
        async for batch in batches:
            yield check.process(batch)
    finally:
        await batches.aclose()


# ---------------------------------------------------------------------- verify


def same_document(a: Any, b: Any) -> bool:
    """JSON equality, strict about types (1 is not 1.0 nor True, -0.0 is not 0.0); object key
    order is free, as JSONB and BSON may reorder keys."""
    if type(a) is not type(b):
        return False
    if type(a) is dict:
        return a.keys() == b.keys() and all(same_document(a[k], b[k]) for k in a)
    if type(a) is list:
        return len(a) == len(b) and all(same_document(x, y) for x, y in zip(a, b, strict=True))
    if type(a) is float:
        return bool(a == b and math.copysign(1.0, a) == math.copysign(1.0, b))
    return bool(a == b)


async def verify_migration(
    source: Any,
    destination: Any,
    *,
    prefix: str = "",
    upgrade: bool = False,
    batch_size: int = 1000,
) -> dict[str, Any]:
    """Walk both stores' ordered scans side by side and compare them document by document.

    ``missing``: in the source only; ``different``: in both, not the same JSON (after upcasting
    the source's when ``upgrade``); ``extra``: in the destination only. Each lists the first 100
    keys; ``*_count`` are the totals. ``ok`` is true when all three are empty.
    """
    src = _as_store(source, "source")
    dst = _as_store(destination, "destination")
    size = _check_batch_size(batch_size)
    check_prefix(prefix)
    started = time.perf_counter()
    check = _DocumentCheck(validate=False, upgrade=upgrade)
    found: dict[str, list[str]] = {"missing": [], "different": [], "extra": []}
    totals = dict.fromkeys(found, 0)

    def note(what: str, key: str) -> None:
        totals[what] += 1
        if len(found[what]) < SAMPLE_LIMIT:
            found[what].append(key)

    def equal(key: str, a: bytes, b: bytes) -> bool:
        if a == b and not upgrade:
            return True
        try:
            return same_document(check.upgrade_for_compare(a, key), orjson.loads(b))
        except orjson.JSONDecodeError:
            return False

    async with _Prefetch(_scan_batches(src, prefix, None, size)) as src_batches, \
            _Prefetch(_scan_batches(dst, prefix, None, size)) as dst_batches:
        left, right = _Items(src_batches), _Items(dst_batches)
        a, b = await left.next(), await right.next()
        while a is not None or b is not None:
            if b is None or (a is not None and a[0] < b[0]):
                assert a is not None
                note("missing", a[0])
                a = await left.next()
            elif a is None or b[0] < a[0]:
                note("extra", b[0])
                b = await right.next()
            else:
                if not equal(a[0], a[1], b[1]):
                    note("different", a[0])
                a, b = await left.next(), await right.next()
    return {
        "ok": not any(totals.values()),
        "source_count": left.count,
        "destination_count": right.count,
        "matching": left.count - totals["missing"] - totals["different"],
        "missing": found["missing"],
        "missing_count": totals["missing"],
        "different": found["different"],
        "different_count": totals["different"],
        "extra": found["extra"],
        "extra_count": totals["extra"],
        "duration_seconds": time.perf_counter() - started,
    }


# ---------------------------------------------------------------------- validate / upgrade


async def count_documents(storage: Any, *, prefix: str = "") -> int:
    """How many documents (reserved keys aside) the store holds under ``prefix``."""
    store = _as_store(storage, "storage")
    total = 0
    async for batch in _scan_batches(store, prefix, None, 1000):
        total += len(batch)
    return total


async def validate_storage(
    storage: Any, *, prefix: str = "", batch_size: int = 1000,
    progress_callback: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Check every document against the schema of its kind and version; change nothing.
    ``outdated_documents`` counts those an ``upgrade`` would rewrite."""
    store = _as_store(storage, "storage")
    size = _check_batch_size(batch_size)
    started = time.perf_counter()
    check = _DocumentCheck(validate=True, upgrade=False)
    counts = _kind_counts()
    checked = 0
    async with _Prefetch(_scan_batches(store, prefix, None, size)) as batches:
        async for batch in batches:
            check.process(batch)
            check.note_outdated(batch)
            checked += len(batch)
            _count_kinds(counts, batch)
            await _call(progress_callback, MigrationProgress(
                checked, 0, batch[-1][0], time.perf_counter() - started))
    return {
        "ok": check.invalid_count == 0,
        "documents_checked": checked,
        **{f"{kind}_checked": n for kind, n in counts.items()},
        "invalid_documents": check.invalid_count,
        "invalid": check.invalid,
        "outdated_documents": check.outdated,
        "duration_seconds": time.perf_counter() - started,
    }


async def upgrade_storage(
    storage: Any, *, prefix: str = "", batch_size: int = 1000,
    progress_callback: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Rewrite, in place, every document of an older version as the newest version. Documents
    that cannot be upgraded are left as they are and reported. Expiry times are not kept on the
    rewritten documents (the contract cannot read them)."""
    store = _as_store(storage, "storage")
    size = _check_batch_size(batch_size)
    started = time.perf_counter()
    check = _DocumentCheck(validate=False, upgrade=True)
    checked = 0
    async with _Prefetch(_scan_batches(store, prefix, None, size)) as batches:
        async for batch in batches:
            processed = check.process(batch)
            changed = [new for old, new in zip(batch, processed, strict=True) if new[1] != old[1]]
            if changed:
                await store.put_many(changed)
            checked += len(batch)
            await _call(progress_callback, MigrationProgress(
                checked, 0, batch[-1][0], time.perf_counter() - started))
    return {
        "documents_checked": checked,
        "documents_upgraded": check.upgraded,
        "invalid_documents": check.invalid_count,
        "invalid": check.invalid,
        "duration_seconds": time.perf_counter() - started,
    }


# ---------------------------------------------------------------------- export / import


async def export_to_json(
    storage: Any, output_path: str | os.PathLike[str], *, prefix: str = "",
    batch_size: int = 1000, progress_callback: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Write every document under ``prefix`` to a file: JSON Lines with a closing manifest
    (gzip for ``.gz``), or one JSON document for a name ending in ``.json`` (see
    ``kvsessions.migration.jsonl``). Streams; the file appears under its name only when complete."""
    store = _as_store(storage, "storage")
    size = _check_batch_size(batch_size)
    check_prefix(prefix)
    started = time.perf_counter()
    path = Path(output_path)
    writer = await asyncio.to_thread(ExportWriter, path, source=repr(store), prefix=prefix)
    counts = _kind_counts()
    try:
        async with _Prefetch(_scan_batches(store, prefix, None, size)) as batches:
            async for batch in batches:
                await asyncio.to_thread(writer.write, batch)
                _count_kinds(counts, batch)
                await _call(progress_callback, MigrationProgress(
                    writer.count, 0, batch[-1][0], time.perf_counter() - started))
        size_bytes = await asyncio.to_thread(writer.close)
    except BaseException:
        writer.abort()
        raise
    return {
        "path": str(path),
        "format": "json" if writer.json_document else "jsonl",
        "documents_exported": writer.count,
        **{f"{kind}_exported": n for kind, n in counts.items()},
        "sha256": writer.sha256,
        "size_bytes": size_bytes,
        "duration_seconds": time.perf_counter() - started,
    }


async def import_from_json(
    storage: Any, input_path: str | os.PathLike[str], *, batch_size: int = 1000,
    progress_callback: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Load an export file (either format, gzip or not) into a store. The whole file is checked
    first: a changed byte, a truncated file or a moved line raises ``ExportFileError`` naming
    the line, and nothing is written. Existing keys are overwritten; others are kept."""
    store = _as_store(storage, "storage")
    size = _check_batch_size(batch_size)
    started = time.perf_counter()
    path = Path(input_path)
    reader = ExportReader(path)
    await asyncio.to_thread(reader.check)
    counts = _kind_counts()
    imported = 0
    batches = reader.batches(size)
    end: Items = []
    while True:
        batch = await asyncio.to_thread(next, batches, end)
        if batch is end:
            break
        await store.put_many(batch)
        imported += len(batch)
        _count_kinds(counts, batch)
        await _call(progress_callback, MigrationProgress(
            imported, 0, batch[-1][0], time.perf_counter() - started))
    return {
        "path": str(path),
        "format": "json" if reader.json_document else "jsonl",
        "documents_imported": imported,
        **{f"{kind}_imported": n for kind, n in counts.items()},
        "sha256": reader.sha256,
        "duration_seconds": time.perf_counter() - started,
    }


async def backup_storage(
    storage: Any, backup_dir: str | os.PathLike[str], *, prefix: str = "",
    progress_callback: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Export to ``backup_dir/kvsessions-backup-<UTC time>.jsonl.gz`` (created if needed) and
    return its path, counts, size and SHA-256. Restore with ``import_from_json``."""
    folder = Path(backup_dir)
    await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    path = folder / f"kvsessions-backup-{stamp}.jsonl.gz"
    suffix = 1
    while path.exists():
        path = folder / f"kvsessions-backup-{stamp}-{suffix}.jsonl.gz"
        suffix += 1
    result = await export_to_json(storage, path, prefix=prefix,
                                  progress_callback=progress_callback)
    result["backup_path"] = result["path"]
    result["created_at"] = _now_iso()
    return result
