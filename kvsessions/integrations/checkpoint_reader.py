"""Reading the LangGraph saver's documents fast: every ``get_tuple`` and ``list`` reads a
checkpoint and the writes of its tasks, and the JSON Schema check of each read was a sixth of
the saver's time. A ``checkpoint`` or ``checkpoint_writes`` document in the form this release
writes is checked here field by field, as ``checkpoint.v1.json`` and
``checkpoint_writes.v1.json`` check it (tests/integrations/test_langgraph.py pins that down);
anything else takes the full path (upcast, schema), which names what is wrong.
"""

from __future__ import annotations

from typing import Any

import orjson

from kvsessions.documents.codec import CURRENT_VERSIONS
from kvsessions.wrappers.validating import ValidatingStore

__all__ = ["read_saver_document"]

_loads = orjson.loads
#: Version 1 only: once a newer one exists, a v1 document must be upcast (-1 matches nothing).
_CHECKPOINT_VERSION = 1 if CURRENT_VERSIONS["checkpoint"] == 1 else -1
_WRITES_VERSION = 1 if CURRENT_VERSIONS["checkpoint_writes"] == 1 else -1
_CHECKPOINT_FIELDS = 8  # kind, v, the three ids, parent_checkpoint_id, checkpoint, metadata
_WRITES_FIELDS = 8  # kind, v, the three ids, task_id, task_path, writes
_WRITE_FIELDS = 3  # idx, channel, value


def read_saver_document(documents: ValidatingStore, key: str, value: bytes) -> dict[str, Any]:
    """The checkpoint or task writes document stored as ``value`` under ``key``, checked; a
    ``ValidationError`` naming what is wrong when it is not one."""
    try:
        document = _loads(value)
    except orjson.JSONDecodeError:
        document = None
    if _is_checkpoint(document) or _is_writes(document):
        return document  # type: ignore[no-any-return]
    return documents.decode(key, value)


def _ids(document: dict[str, Any]) -> bool:
    thread_id, checkpoint_id = document["thread_id"], document["checkpoint_id"]
    return (type(thread_id) is str and thread_id != "" and type(checkpoint_id) is str
            and checkpoint_id != "" and type(document["checkpoint_ns"]) is str)


def _is_typed_bytes(field: Any) -> bool:
    return (type(field) is dict and len(field) == 2 and type(field.get("type")) is str
            and type(field.get("data")) is str)


def _is_checkpoint(document: Any) -> bool:
    try:
        if type(document) is not dict or len(document) != _CHECKPOINT_FIELDS:
            return False
        version, parent = document["v"], document["parent_checkpoint_id"]
        return (document["kind"] == "checkpoint" and type(version) is int
                and version == _CHECKPOINT_VERSION and _ids(document)
                and (parent is None or type(parent) is str)
                and _is_typed_bytes(document["checkpoint"])
                and type(document["metadata"]) is dict)
    except KeyError:
        return False


def _is_writes(document: Any) -> bool:
    try:
        if type(document) is not dict or len(document) != _WRITES_FIELDS:
            return False
        version, writes = document["v"], document["writes"]
        return (document["kind"] == "checkpoint_writes" and type(version) is int
                and version == _WRITES_VERSION and _ids(document)
                and type(document["task_id"]) is str and type(document["task_path"]) is str
                and type(writes) is list and all(_is_write(write) for write in writes))
    except KeyError:
        return False


def _is_write(write: Any) -> bool:
    return (type(write) is dict and len(write) == _WRITE_FIELDS and type(write.get("idx")) is int
            and type(write.get("channel")) is str and _is_typed_bytes(write.get("value")))
