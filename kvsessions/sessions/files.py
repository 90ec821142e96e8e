"""Uploaded-file records (``file:{fid}``): saving, loading, listing and deleting the
expired ones through the expiry index (``index:file-expiry:``, kept by the rules of
``kvsessions.sessions.index``). A mixin of ``SessionStorage``, which provides the stores."""

from __future__ import annotations

from datetime import datetime

from kvsessions.documents.codec import document_to_file, file_to_document, parse_timestamp
from kvsessions.documents.keys import (
    FILE_EXPIRY_PREFIX,
    FILE_PREFIX,
    file_key,
    index_entry_parts,
    index_timestamp,
)
from kvsessions.documents.models import UploadedFileRecord, utc_now
from kvsessions.errors import ValidationError
from kvsessions.kv.base import KVStore, outlive_cancellation
from kvsessions.sessions.arguments import check_limit
from kvsessions.sessions.index import ENTRY, IndexState, file_entry
from kvsessions.wrappers.validating import ValidatingStore

__all__ = ["FileRecords"]

#: How many keys one ``delete_many`` call removes.
_DELETE_BATCH = 500


class FileRecords:
    """The file-record half of ``SessionStorage``."""

    _documents: ValidatingStore
    _raw: KVStore
    _index_state: IndexState

    async def save_file_record(self, file_record: UploadedFileRecord) -> bool:
        """Store the record, with its entry in the expiry index written before it (and the
        entry of the expiry it replaces removed after it)."""
        key = file_key(file_record.file_id)
        document = file_to_document(file_record)
        value = self._documents.encode(key, document)  # raises if invalid, before any write
        entry = file_entry(document)
        await self._index_state.before_write()
        old = await self._raw.get(key)
        old_entry = None
        if old is not None:
            try:
                old_entry = file_entry(self._documents.decode(key, old))
            except ValidationError:
                old_entry = None  # a damaged record is replaced; its entry, if any, is stale
        await outlive_cancellation(self._write_file(key, value, entry, old_entry))
        return True

    async def _write_file(self, key: str, value: bytes, entry: str | None,
                          old_entry: str | None) -> None:
        if entry is not None and entry != old_entry:
            await self._raw.put(entry, ENTRY)
        await self._raw.put(key, value)
        if old_entry is not None and old_entry != entry:
            await self._raw.delete(old_entry)
        # Rules 3 and 4 of kvsessions.sessions.index: a remover may have taken the new entry.
        await self._settle_file_entries([item for item in (entry, old_entry) if item])

    async def _settle_file_entries(self, entries: list[str]) -> None:
        """Read the records ``entries`` name again and put back the entries that are current."""
        named = {entry: parts[1] for entry in entries
                 if (parts := index_entry_parts(entry, FILE_EXPIRY_PREFIX)) is not None}
        ids = list(dict.fromkeys(named.values()))
        back: list[tuple[str, bytes]] = []
        for first in range(0, len(ids), _DELETE_BATCH):
            batch = ids[first:first + _DELETE_BATCH]
            keys = [file_key(file_id) for file_id in batch]
            for key, value in zip(keys, await self._raw.get_many(keys), strict=True):
                current = None if value is None else _entry_of(self._documents, key, value)
                if current is not None and current in named:
                    back.append((current, ENTRY))
        if back:
            await self._raw.put_many(back)

    async def load_file_record(self, file_id: str) -> UploadedFileRecord | None:
        key = file_key(file_id)
        document = await self._documents.get_document(key)
        return None if document is None else document_to_file(document, key=key)

    async def list_file_records(self, limit: int = 100) -> list[UploadedFileRecord]:
        """Up to ``limit`` records, newest id first (ids from ``UploadedFileRecord.create`` are
        time-ordered): one short reverse scan."""
        check_limit(limit, "limit")
        return [document_to_file(document, key=key) async for key, document in
                self._documents.scan_documents(FILE_PREFIX, limit=limit, reverse=True)]

    async def delete_expired_files(self) -> int:
        """Delete the file records whose ``expires_at`` has passed; how many were deleted.
        Walks the expiry index up to now and stops: it reads the expired records, not all.
        A record saved again meanwhile (with a new expiry) is kept."""
        now = utc_now()
        if not await self._index_state.complete_for_reading():
            return await self._delete_expired_by_scan(now)
        # Backwards from just after every entry <= now: only expired entries are read.
        start = FILE_EXPIRY_PREFIX + index_timestamp(now) + ";"
        deleted = 0
        while True:
            entries = [key async for key, _ in self._raw.scan(
                FILE_EXPIRY_PREFIX, start_after=start, limit=_DELETE_BATCH, reverse=True)]
            deleted += await self._delete_expired_entries(entries, now)
            if len(entries) < _DELETE_BATCH:
                return deleted
            start = entries[-1]

    async def _delete_expired_entries(self, entries: list[str], now: datetime) -> int:
        named = {entry: parts[1] for entry in entries
                 if (parts := index_entry_parts(entry, FILE_EXPIRY_PREFIX)) is not None}
        ids = list(dict.fromkeys(named.values()))
        keys = [file_key(file_id) for file_id in ids]
        deleted = 0
        for key, value in zip(keys, await self._raw.get_many(keys), strict=True):
            if value is None:
                continue
            document = self._documents.decode(key, value)
            if parse_timestamp(document["expires_at"], key=key, path="expires_at") <= now:
                # Only the record as read: one saved again meanwhile is kept.
                deleted += await self._raw.compare_and_set(key, value, None)
        # Every entry read names a record now gone, expired, or expiring later (its own entry
        # is elsewhere): remove them all, then put back any made current meanwhile.
        await self._raw.delete_many(entries)
        await self._settle_file_entries(entries)
        return deleted

    async def _delete_expired_by_scan(self, now: datetime) -> int:
        """The walk over every record, for stores whose index is not built yet."""
        expired: list[str] = []
        async for key, document in self._documents.scan_documents(FILE_PREFIX):
            if parse_timestamp(document["expires_at"], key=key, path="expires_at") <= now:
                expired.append(key)
        deleted = 0
        for start in range(0, len(expired), _DELETE_BATCH):
            deleted += await self._raw.delete_many(expired[start:start + _DELETE_BATCH])
        return deleted


def _entry_of(documents: ValidatingStore, key: str, value: bytes) -> str | None:
    try:
        return file_entry(documents.decode(key, value))
    except ValidationError:
        return None
