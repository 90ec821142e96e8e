"""Export, import and backup: a store to a self-checking file and back (the file formats are
``kvsessions.migration.jsonl``). File work runs on worker threads, never on the event loop."""

from __future__ import annotations

import asyncio
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kvsessions.kv.values import check_prefix
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
    scan_batches,
)
from kvsessions.migration.jsonl import ExportReader, ExportWriter, utc_timestamp

__all__ = ["backup_storage", "export_to_json", "import_from_json"]


async def export_to_json(
    storage: Any, output_path: str | os.PathLike[str], *, prefix: str = "",
    batch_size: int = 1000, progress_callback: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Write every document under ``prefix`` to a file: JSON Lines with a closing manifest
    (gzip for ``.gz``), or one JSON document for a name ending in ``.json`` (see
    ``kvsessions.migration.jsonl``). Streams; the file appears under its name only when complete."""
    store = as_store(storage, "storage")
    size = check_batch_size(batch_size)
    check_prefix(prefix)
    started = time.perf_counter()
    path = Path(output_path)
    writer = await asyncio.to_thread(ExportWriter, path, source=repr(store), prefix=prefix)
    counts = kind_counts()
    try:
        async with Prefetch(scan_batches(store, prefix, None, size)) as batches:
            async for batch in batches:
                await asyncio.to_thread(writer.write, batch)
                count_kinds(counts, batch)
                await report_progress(progress_callback, MigrationProgress(
                    writer.count, 0, batch[-1][0], time.perf_counter() - started))
        size_bytes = await asyncio.to_thread(writer.close)
    except BaseException:
        await asyncio.to_thread(writer.abort)
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
    store = as_store(storage, "storage")
    size = check_batch_size(batch_size)
    started = time.perf_counter()
    path = Path(input_path)
    reader = ExportReader(path)
    await asyncio.to_thread(reader.check)
    counts = kind_counts()
    imported = 0
    batches = reader.batches(size)
    end: Items = []
    try:
        while True:
            batch = await asyncio.to_thread(next, batches, end)
            if batch is end:
                break
            await store.put_many(batch)
            imported += len(batch)
            count_kinds(counts, batch)
            await report_progress(progress_callback, MigrationProgress(
                imported, 0, batch[-1][0], time.perf_counter() - started))
    finally:
        await asyncio.to_thread(batches.close)  # closes the file it reads, off the loop too
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
    path = await asyncio.to_thread(_new_backup_path, Path(backup_dir))
    result = await export_to_json(storage, path, prefix=prefix,
                                  progress_callback=progress_callback)
    result["backup_path"] = result["path"]
    result["created_at"] = utc_timestamp()
    return result


def _new_backup_path(folder: Path) -> Path:
    """A backup name not taken yet in ``folder`` (created if needed). Blocking: on a thread."""
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    path = folder / f"kvsessions-backup-{stamp}.jsonl.gz"
    suffix = 1
    while path.exists():
        path = folder / f"kvsessions-backup-{stamp}-{suffix}.jsonl.gz"
        suffix += 1
    return path
