"""Moving documents between stores, one idea a module:

* ``batches``: a store's documents as ordered batches, read ahead (what everything here streams);
* ``copy``: ``migrate_storage``, scan-and-copy with its checkpointed writer;
* ``checkpoint``: the resumable checkpoint under a reserved key;
* ``verify``: ``verify_migration``, a merge-join of two ordered scans;
* ``document_checks``: optional upcasting and validation on the way;
* ``in_place``: ``validate_storage`` and ``upgrade_storage`` of one store;
* ``export``: ``export_to_json``, ``import_from_json`` and ``backup_storage``;
* ``jsonl``: the self-checking export file formats.
"""

from kvsessions.kv.values import RESERVED_PREFIX
from kvsessions.migration.batches import (
    KIND_PREFIXES,
    MigrationProgress,
    ProgressCallback,
    count_documents,
)
from kvsessions.migration.checkpoint import CHECKPOINT_PREFIX, checkpoint_key
from kvsessions.migration.copy import migrate_storage
from kvsessions.migration.export import backup_storage, export_to_json, import_from_json
from kvsessions.migration.in_place import upgrade_storage, validate_storage
from kvsessions.migration.jsonl import ExportFileError
from kvsessions.migration.verify import same_document, verify_migration

__all__ = [
    "CHECKPOINT_PREFIX",
    "KIND_PREFIXES",
    "RESERVED_PREFIX",
    "ExportFileError",
    "MigrationProgress",
    "ProgressCallback",
    "backup_storage",
    "checkpoint_key",
    "count_documents",
    "export_to_json",
    "import_from_json",
    "migrate_storage",
    "same_document",
    "upgrade_storage",
    "validate_storage",
    "verify_migration",
]
