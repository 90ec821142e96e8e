"""Compare two stores document by document: both ordered scans walked side by side (a
merge-join), so neither store is ever held in memory."""

from __future__ import annotations

import time
from typing import Any

import orjson

from kvsessions.kv.values import check_prefix, same_json
from kvsessions.migration.batches import (
    SAMPLE_LIMIT,
    ItemCursor,
    Prefetch,
    as_store,
    check_batch_size,
    scan_batches,
)
from kvsessions.migration.document_checks import DocumentCheck

__all__ = ["same_document", "verify_migration"]


#: Two documents are the same when they decode to equal JSON values (``kv.values.same_json``).
same_document = same_json


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
    src = as_store(source, "source")
    dst = as_store(destination, "destination")
    size = check_batch_size(batch_size)
    check_prefix(prefix)
    started = time.perf_counter()
    check = DocumentCheck(validate=False, upgrade=upgrade)
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

    async with Prefetch(scan_batches(src, prefix, None, size)) as src_batches, \
            Prefetch(scan_batches(dst, prefix, None, size)) as dst_batches:
        left, right = ItemCursor(src_batches), ItemCursor(dst_batches)
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
