"""Scan-and-copy between any two stores, resumable.

``migrate_storage`` reads the next batch while the last one is being written (a background task
and a queue of depth 2). Resuming rests on a checkpoint kept in the destination
(``kvsessions.migration.checkpoint``). The checkpoint names the last key of a batch whose
``put_many`` has already returned, and it travels inside the *next* batch's ``put_many``, so it
never runs ahead of the data on any store, atomic batches or not. A killed run resumes after it
and copies at most one batch again (puts overwrite, so nothing is duplicated). A run that
finishes deletes its checkpoint, so the next run copies everything again.

A destination that already holds documents under the prefix, which no earlier run of this
migration wrote, is refused before anything is written (``merge=True`` copies into it anyway):
another application's ``session:1`` mixed into the copy would break the sessions read there.
The first write of a run is its checkpoint (with no last key), so that a run interrupted in its
first batch is still recognised as this migration's when run again.

Documents that fail validation (or cannot be upgraded) are copied unchanged and reported in
``invalid_documents`` / ``invalid``: a migration never drops data on its own. Expiry times (ttl)
are not copied: the KV contract has no way to read them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator
from typing import Any

from kvsessions.errors import ConfigError
from kvsessions.kv.base import KVStore
from kvsessions.kv.values import RESERVED_PREFIX, check_prefix
from kvsessions.migration.batches import (
    Items,
    MigrationProgress,
    Prefetch,
    ProgressCallback,
    as_store,
    check_batch_size,
    count_kinds,
    kind_counts,
    report_progress,
)
from kvsessions.migration.checkpoint import (
    ResumePlan,
    checkpoint_key,
    claim_destination,
    delete_checkpoints,
    encode_checkpoint,
    put_many_with_checkpoint,
    read_checkpoints,
    stream_checkpoint_key,
)
from kvsessions.migration.document_checks import DocumentCheck
from kvsessions.migration.streams import Stream, StreamPool, shared_length, span_batches
from kvsessions.migration.verify import verify_migration

__all__ = ["migrate_storage"]

logger = logging.getLogger("kvsessions.migration.copy")

#: Batches timed with one, then with two writes in flight, when concurrency is automatic.
_TRIAL = 4


async def migrate_storage(
    source: Any,
    destination: Any,
    verify: bool = True,
    progress_callback: ProgressCallback | None = None,
    *,
    batch_size: int = 1000,
    resume: bool = True,
    prefix: str = "",
    upgrade: bool = False,
    validate: bool = True,
    dry_run: bool = False,
    concurrency: int | None = None,
    merge: bool = False,
    workers: int = 1,
) -> dict[str, Any]:
    """Copy every document under ``prefix`` from ``source`` to ``destination`` (see the module
    docstring for resuming). ``dry_run`` reads and checks everything and writes nothing.
    ``concurrency`` batches are written at once while the scan reads ahead; None tries one and
    then two writes in flight on the first batches and keeps the faster (two help a server
    with cores to spare, such as PostgreSQL; they slow down one that shares this machine's).
    ``merge`` copies into a destination that already holds other documents under ``prefix``
    (refused with ``ConfigError`` otherwise, before anything is written). ``workers`` streams
    copy key ranges at once (``kvsessions.migration.streams``), each with its own checkpoint
    and ``concurrency`` writes in flight (default 1 when ``workers`` > 1).

    Counts are of this run (a resumed run counts from its checkpoints); ``verified`` is None
    when ``verify`` is false, else whether verify found both sides equal (details in
    ``verification``).
    """
    src = as_store(source, "source")
    dst = as_store(destination, "destination")
    if src is dst:
        raise ConfigError("source and destination are the same store")
    size = check_batch_size(batch_size)
    if concurrency is not None:
        concurrency = check_batch_size(concurrency, what="concurrency")
    workers = check_batch_size(workers, what="workers")
    check_prefix(prefix)
    started = time.perf_counter()
    check = DocumentCheck(validate=validate, upgrade=upgrade)
    ckey = checkpoint_key(prefix)
    identity = {"source": repr(src), "prefix": prefix, "upgrade": upgrade}

    plan = await read_checkpoints(dst, prefix, identity, resume=resume)
    if not plan.claimed and not merge:
        await _refuse_occupied(dst, prefix)
    if not dry_run:
        if plan.stale_keys:
            await delete_checkpoints(dst, plan.stale_keys)
        if not any(interval.stream == 0 for interval in plan.done):
            await claim_destination(dst, ckey, identity)
    copied_before = plan.copied
    resumed_from = plan.done[0].last_key if plan.done else None
    tally = _Tally(copied_before, progress_callback, started)

    # The checkpoint rides in each batch: read one document less, so that a put_many holds
    # exactly batch_size entries (stores that split bigger batches stay at one statement).
    read_size = size if dry_run or size == 1 else size - 1
    in_flight = 1 if dry_run else concurrency if workers == 1 or concurrency else 1

    async def copy(stream: Stream) -> None:
        writer = _CheckpointedWriter(
            dst, stream_checkpoint_key(prefix, stream.number), identity, stream.resume_after,
            stream.copied_before, writers=in_flight, dry_run=dry_run, tally=tally,
            after=stream.after)
        batches = _processed(check, span_batches(src, prefix, stream, read_size))
        try:
            async with Prefetch(batches) as prefetched:
                async for batch in prefetched:
                    await writer.write(batch)
                await writer.drain()
        finally:
            await writer.cancel()

    streams = _streams(plan)
    pool = StreamPool(workers, copy, lambda after: _next_key(src, prefix, after),
                      first_key=None, last_key=None, skip=len(prefix), min_split=size,
                      next_number=max(plan.streams | {s.number for s in streams}) + 1)
    if workers > 1:
        pool.first_key = await _next_key(src, prefix, None)
        pool.last_key = await _last_key(src, prefix)
        if pool.first_key is not None and pool.last_key is not None:
            pool.skip = shared_length(pool.first_key, pool.last_key)
    await pool.run(streams)
    if not dry_run:
        await delete_checkpoints(dst, [key async for key, _ in dst.scan(ckey)])
    counts, copied = tally.counts, tally.copied

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
        "workers": workers,
        "streams": len(streams) + pool.splits,
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


def _streams(plan: ResumePlan) -> list[Stream]:
    """The streams that copy what the checkpoints say is left: a gap after a stream's copied
    interval continues that stream (its checkpoint stays one interval); another is new."""
    streams: list[Stream] = []
    used = {interval.stream for interval in plan.done}
    fresh = (number for number in range(1 << 30) if number not in plan.streams or
             (number == 0 and 0 not in used))
    for after, upto, continues in plan.gaps():
        if continues is not None:
            streams.append(Stream(continues.stream, continues.after, upto, after,
                                  continues.copied))
        else:
            streams.append(Stream(next(fresh), after, upto, after))
    return streams


async def _next_key(store: KVStore, prefix: str, after: str | None) -> str | None:
    async for key, _ in store.scan(prefix, start_after=after, limit=1):
        return key
    return None


async def _last_key(store: KVStore, prefix: str) -> str | None:
    async for key, _ in store.scan(prefix, limit=1, reverse=True):
        return key
    return None


#: How many of the documents found in an occupied destination the refusal names.
_SHOWN_OCCUPANTS = 3


async def _refuse_occupied(destination: KVStore, prefix: str) -> None:
    """``ConfigError`` naming the first documents under ``prefix``, when there are any."""
    found: list[str] = []
    last: str | None = None
    while len(found) <= _SHOWN_OCCUPANTS:  # short scans: a big destination is not read whole
        keys = [key async for key, _ in destination.scan(prefix, start_after=last, limit=16)]
        if not keys:
            break
        found += [key for key in keys if not key.startswith(RESERVED_PREFIX)]
        last = keys[-1]
    if not found:
        return
    shown = ", ".join(repr(key[:80]) for key in found[:_SHOWN_OCCUPANTS])
    more = " and more" if len(found) > _SHOWN_OCCUPANTS else ""
    under = f" under {prefix!r}" if prefix else ""
    raise ConfigError(
        f"the destination {destination!r} already holds documents{under} that this migration "
        f"did not write ({shown}{more}); nothing was written: migrate into an empty store, or "
        "merge into this one on purpose (--merge, merge=True)")


class _Tally:
    """What every stream has written in this run, summed for the result and the progress
    callback."""

    def __init__(self, copied_before: int, callback: ProgressCallback | None,
                 started: float) -> None:
        self.copied_before = copied_before
        self.callback = callback
        self.started = started
        self.counts = kind_counts()
        self.copied = 0  # documents whose write returned, in this run

    async def add(self, batch: Items) -> None:
        self.copied += len(batch)
        count_kinds(self.counts, batch)
        await report_progress(self.callback, MigrationProgress(
            self.copied_before + self.copied, self.copied_before, batch[-1][0],
            time.perf_counter() - self.started))


class _CheckpointedWriter:
    """Writes batches with up to ``writers`` ``put_many`` calls in flight. The checkpoint added
    to a batch names the last key of the longest run of batches, from the start, whose writes
    had all returned when that batch was sent: whatever order the writes land in, a stored
    checkpoint is never ahead of the data (it may be behind, by the batches in flight)."""

    def __init__(self, destination: KVStore, checkpoint: str, identity: dict[str, Any],
                 resumed_from: str | None, copied_before: int, *, writers: int | None,
                 dry_run: bool, tally: _Tally, after: str | None = None) -> None:
        self.destination = destination
        self.checkpoint = checkpoint
        self.identity = identity
        self.after = after
        self.auto = writers is None
        self.writers = 1 if writers is None else writers
        self.dry_run = dry_run
        self._trial_marks: dict[int, tuple[float, int]] = {}
        self.tally = tally
        self.copied_before = copied_before
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
            state = encode_checkpoint(self.identity, self._done_key,
                                      self.copied_before + self._contiguous_copied,
                                      after=self.after)
            items = [*batch, (self.checkpoint, state)]
            self._written_key = self._done_key
        task = asyncio.create_task(
            put_many_with_checkpoint(self.destination, items, self.checkpoint))
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
        while self._contiguous + 1 in self._finished:
            self._contiguous += 1
            self._finished.discard(self._contiguous)
            done = self._pending.pop(self._contiguous)
            self._contiguous_copied += len(done)
            self._done_key = done[-1][0]
            if self.auto:
                self._tune()
        await self.tally.add(batch)

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
    check: DocumentCheck, batches: AsyncGenerator[Items, None]
) -> AsyncGenerator[Items, None]:
    try:
        async for batch in batches:
            yield check.process(batch)
    finally:
        await batches.aclose()
