"""Uploaded-file records (``file:{fid}``): saving, loading, listing and deleting the
expired ones. A mixin of ``SessionStorage``, which provides the stores."""

from __future__ import annotations

from kvsessions.documents.codec import document_to_file, file_to_document, parse_timestamp
from kvsessions.documents.keys import FILE_PREFIX, file_key
from kvsessions.documents.models import UploadedFileRecord, utc_now
from kvsessions.kv.base import KVStore
from kvsessions.sessions.arguments import check_limit
from kvsessions.wrappers.validating import ValidatingStore

__all__ = ["FileRecords"]

#: How many keys one ``delete_many`` call removes.
_DELETE_BATCH = 500


class FileRecords:
    """The file-record half of ``SessionStorage``."""

    _documents: ValidatingStore
    _raw: KVStore

    async def save_file_record(self, file_record: UploadedFileRecord) -> bool:
        key = file_key(file_record.file_id)
        await self._documents.put_document(key, file_to_document(file_record))
        return True

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
        """Delete the file records whose ``expires_at`` has passed; how many were deleted."""
        now = utc_now()
        expired: list[str] = []
        async for key, document in self._documents.scan_documents(FILE_PREFIX):
            if parse_timestamp(document["expires_at"], key=key, path="expires_at") <= now:
                expired.append(key)
        deleted = 0
        for start in range(0, len(expired), _DELETE_BATCH):
            deleted += await self._raw.delete_many(expired[start:start + _DELETE_BATCH])
        return deleted
