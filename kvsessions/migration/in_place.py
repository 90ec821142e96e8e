"""Checking and upgrading a store where it is: ``validate_storage`` reads every document
against its schema and changes nothing; ``upgrade_storage`` rewrites older document versions as
the newest."""

from __future__ import annotations

import time
from typing import Any

from kvsessions.documents.codec import decode_document
from kvsessions.documents.keys import upgrade_key_layout
from kvsessions.migration.batches import (
    MigrationProgress,
    Prefetch,
    ProgressCallback,
    as_store,
    check_batch_size,
    count_kinds,
    kind_counts,
    report_progress,
    scan_batches,
)
from kvsessions.migration.document_checks import DocumentCheck
from kvsessions.sessions.index import build_index

__all__ = ["upgrade_storage", "validate_storage"]


async def validate_storage(
    storage: Any, *, prefix: str = "", batch_size: int = 1000,
    progress_callback: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Check every document against the schema of its kind and version; change nothing.
    ``outdated_documents`` counts those an ``upgrade`` would rewrite."""
    store = as_store(storage, "storage")
    size = check_batch_size(batch_size)
    started = time.perf_counter()
    check = DocumentCheck(validate=True, upgrade=False)
    counts = kind_counts()
    checked = 0
    async with Prefetch(scan_batches(store, prefix, None, size)) as batches:
        async for batch in batches:
            check.process(batch)
            check.note_outdated(batch)
            checked += len(batch)
            count_kinds(counts, batch)
            await report_progress(progress_callback, MigrationProgress(
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
    """Move keys the store kept in an older layout of its own (``KVStore.upgrade_layout``),
    rewrite, in place, every document of an older version as the newest version, and move
    documents an earlier release stored under legacy keys (ids holding ``:`` or ``%``) to the
    keys of this layout (``upgrade_key_layout``), then build the session and file index if the
store has none yet (``kvsessions.sessions.index.build_index``: resumable, it reports progress
like the rewrite). Documents that cannot be upgraded are left as
    they are and reported. Expiry times are not kept on the rewritten documents (the contract
    cannot read them)."""
    store = as_store(storage, "storage")
    size = check_batch_size(batch_size)
    started = time.perf_counter()
    # The store's own older layout first (a Redis namespace under one hash tag): until it is
    # moved, the store refuses to read it.
    layout_moved = await store.upgrade_layout()
    check = DocumentCheck(validate=False, upgrade=True)
    checked = 0
    async with Prefetch(scan_batches(store, prefix, None, size)) as batches:
        async for batch in batches:
            processed = check.process(batch)
            changed = [new for old, new in zip(batch, processed, strict=True) if new[1] != old[1]]
            if changed:
                await store.put_many(changed)
            checked += len(batch)
            await report_progress(progress_callback, MigrationProgress(
                checked, 0, batch[-1][0], time.perf_counter() - started))
    moved = await upgrade_key_layout(store) if prefix == "" else 0
    indexed = 0
    if prefix == "":
        async def report(done: int, last_key: str) -> None:
            await report_progress(progress_callback, MigrationProgress(
                checked + done, checked, last_key, time.perf_counter() - started))

        indexed = await build_index(
            store, lambda key, value: decode_document(value, key=key), report)
    return {
        "documents_checked": checked,
        "documents_upgraded": check.upgraded,
        "keys_moved": moved,
        "layout_keys_moved": layout_moved,
        "documents_indexed": indexed,
        "invalid_documents": check.invalid_count,
        "invalid": check.invalid,
        "duration_seconds": time.perf_counter() - started,
    }
