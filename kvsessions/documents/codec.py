"""Models <-> versioned JSON documents <-> bytes (the key layout is in ``keys``).

Every document carries its ``kind`` and schema version ``v``. Writing always produces the newest
version; reading an older one upcasts it in memory, one version at a time, through the
upcasters registered here (``kvsessions upgrade`` rewrites a store to the newest).

Encoding refuses what orjson would write lossily or not at all (NaN and infinities, which it
writes as ``null``; lone surrogates; integers beyond 64 bits) with a ``ValidationError`` naming
the field, before any store sees the document.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson

from kvsessions.documents.keys import session_key
from kvsessions.documents.models import ChatMessage, ChatSession, UploadedFileRecord
from kvsessions.errors import (
    DocumentTooLargeError,
    UnsupportedVersionError,
    ValidationError,
)
from kvsessions.kv.values import MAX_DEPTH

__all__ = [
    "CURRENT_VERSIONS",
    "decode_document",
    "document_to_file",
    "document_to_message",
    "document_to_session",
    "encode_document",
    "file_to_document",
    "format_timestamp",
    "message_to_document",
    "parse_timestamp",
    "register_upcaster",
    "session_to_document",
    "upgrade_document",
]

#: The version written for each kind of document.
CURRENT_VERSIONS: dict[str, int] = {"session": 2, "message": 1, "file": 1, "index": 1,
                                     "state": 1, "checkpoint": 1, "checkpoint_writes": 1}

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
#: (kind, version) -> function turning a document of that version into the next version.
_UPCASTERS: dict[tuple[str, int], Upcaster] = {}


# ---------------------------------------------------------------------------- timestamps

def format_timestamp(moment: datetime) -> str:
    """ISO 8601 in UTC with a ``Z``; a naive datetime is refused (it has no zone to convert)."""
    if moment.tzinfo is None:
        raise ValidationError("naive datetime; use a timezone-aware one (e.g. UTC)",
                              path=None)
    text = moment.astimezone(UTC).isoformat()
    return text[:-6] + "Z"


def parse_timestamp(text: Any, *, key: str | None = None, path: str) -> datetime:
    if not isinstance(text, str):
        raise ValidationError(f"expected an ISO 8601 timestamp, got {type(text).__name__}",
                              key=key, path=path)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValidationError(f"{text[:40]!r} is not an ISO 8601 timestamp", key=key,
                              path=path) from None
    if moment.tzinfo is None:
        raise ValidationError(f"{text[:40]!r} has no time zone", key=key, path=path)
    return moment.astimezone(UTC)


def _timestamp_field(document: dict[str, Any], name: str, key: str | None) -> str:
    value = document[name]
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValidationError("naive datetime; use a timezone-aware one (e.g. UTC)",
                                  key=key, path=name, kind=document.get("kind"))
        return format_timestamp(value)
    if not isinstance(value, str):
        raise ValidationError(f"expected a datetime, got {type(value).__name__}", key=key,
                              path=name, kind=document.get("kind"))
    return value


# ---------------------------------------------------------------------------- models

def session_to_document(session: ChatSession) -> dict[str, Any]:
    """The session head; messages are separate documents."""
    document: dict[str, Any] = {
        "kind": "session",
        "v": CURRENT_VERSIONS["session"],
        "session_id": session.session_id,
        "model": session.model,
        "created_at": session.created_at,
        "updated_at": session.updated_at,
        "message_count": session.message_count,
        "status": session.status,
        "metadata": session.metadata,
        "revision": session.revision,
    }
    if session.user_id is not None:
        document["user_id"] = session.user_id
    if session.app_name is not None:
        document["app_name"] = session.app_name
    key = session_key(session.session_id) if isinstance(session.session_id, str) else None
    for name in ("created_at", "updated_at"):
        document[name] = _timestamp_field(document, name, key)
    return document


def message_to_document(message: ChatMessage) -> dict[str, Any]:
    document: dict[str, Any] = {
        "kind": "message",
        "v": CURRENT_VERSIONS["message"],
        "message_id": message.message_id,
        "session_id": message.session_id,
        "role": message.role,
        "content": message.content,
        "created_at": message.created_at,
        "metadata": message.metadata,
    }
    document["created_at"] = _timestamp_field(document, "created_at", None)
    return document


def file_to_document(record: UploadedFileRecord) -> dict[str, Any]:
    document: dict[str, Any] = {
        "kind": "file",
        "v": CURRENT_VERSIONS["file"],
        "file_id": record.file_id,
        "gemini_file_name": record.gemini_file_name,
        "gemini_file_uri": record.gemini_file_uri,
        "display_name": record.display_name,
        "size": record.size,
        "mime_type": record.mime_type,
        "uploaded_at": record.uploaded_at,
        "expires_at": record.expires_at,
        "metadata": record.metadata,
    }
    for name in ("uploaded_at", "expires_at"):
        document[name] = _timestamp_field(document, name, None)
    return document


def _expect_kind(document: dict[str, Any], kind: str, key: str | None) -> None:
    """A valid document of another kind under this key is still not what the caller asked."""
    if document.get("kind") != kind:
        raise ValidationError(f"expected a {kind!r} document, found {document.get('kind')!r}",
                              key=key, path="kind", kind=kind)


def document_to_session(document: dict[str, Any], *, key: str | None = None) -> ChatSession:
    """A session head from a validated document of the current version (no messages yet)."""
    _expect_kind(document, "session", key)
    return ChatSession(
        session_id=document["session_id"],
        model=document["model"],
        created_at=parse_timestamp(document["created_at"], key=key, path="created_at"),
        updated_at=parse_timestamp(document["updated_at"], key=key, path="updated_at"),
        message_count=document["message_count"],
        messages=[],
        metadata=document["metadata"],
        status=document["status"],
        user_id=document.get("user_id"),
        app_name=document.get("app_name"),
        revision=document.get("revision", 0),
    )


def document_to_message(document: dict[str, Any], *, key: str | None = None) -> ChatMessage:
    _expect_kind(document, "message", key)
    return ChatMessage(
        message_id=document["message_id"],
        session_id=document["session_id"],
        role=document["role"],
        content=document["content"],
        created_at=parse_timestamp(document["created_at"], key=key, path="created_at"),
        metadata=document["metadata"],
    )


def document_to_file(document: dict[str, Any], *, key: str | None = None) -> UploadedFileRecord:
    _expect_kind(document, "file", key)
    return UploadedFileRecord(
        file_id=document["file_id"],
        gemini_file_name=document["gemini_file_name"],
        gemini_file_uri=document["gemini_file_uri"],
        display_name=document["display_name"],
        size=document["size"],
        mime_type=document["mime_type"],
        uploaded_at=parse_timestamp(document["uploaded_at"], key=key, path="uploaded_at"),
        expires_at=parse_timestamp(document["expires_at"], key=key, path="expires_at"),
        metadata=document["metadata"],
    )


# ---------------------------------------------------------------------------- bytes

def encode_document(document: dict[str, Any], *, key: str | None = None) -> bytes:
    """JSON bytes of ``document``, refusing what cannot be kept losslessly on every store."""
    _check_encodable(document, key)
    try:
        return orjson.dumps(document)
    except (orjson.JSONEncodeError, TypeError) as exc:  # pragma: no cover - caught above
        raise ValidationError(f"cannot be encoded as JSON: {exc}", key=key) from None


def _check_encodable(document: dict[str, Any], key: str | None) -> None:
    """Refuse what cannot be stored losslessly, naming where: a quick walk, and only when it
    finds something, the walk that names the field (building every path costs more than the
    rest of an encode)."""
    if not _encodable(document):
        _name_unencodable(document, key)
        raise ValidationError("cannot be stored losslessly", key=key)  # pragma: no cover


def _encodable(document: dict[str, Any]) -> bool:
    """Whether every value is a JSON value every store keeps (the rules of
    ``_name_unencodable``), without building paths."""
    stack: list[tuple[Any, int]] = [(document, 1)]
    pop, push = stack.pop, stack.append
    while stack:
        node, depth = pop()
        node_type = type(node)
        if node_type is str:
            if not node.isascii() and _has_surrogate(node):
                return False
        elif node_type is dict:
            if depth > MAX_DEPTH:
                return False
            for name, child in node.items():
                if type(name) is not str or (not name.isascii() and _has_surrogate(name)):
                    return False
                push((child, depth + 1))
        elif node_type is list:
            if depth > MAX_DEPTH:
                return False
            stack.extend([(child, depth + 1) for child in node])
        elif node_type is int:
            if not -(2**63) <= node < 2**63:
                return False
        elif node_type is float:
            if not math.isfinite(node):
                return False
        elif node is not None and node_type is not bool:
            return False
    return True


def _name_unencodable(document: dict[str, Any], key: str | None) -> None:
    """One walk over the document: types, floats, strings, integer range and depth."""
    kind = document.get("kind") if isinstance(document.get("kind"), str) else None
    stack: list[tuple[Any, str, int]] = [(document, "", 1)]
    while stack:
        node, path, depth = stack.pop()
        node_type = type(node)
        if node_type is str:
            if _has_surrogate(node):
                raise ValidationError("string holds a lone surrogate, which is not valid "
                                      "Unicode", key=key, path=path or "/", kind=kind)
        elif node_type is dict or node_type is list:
            if depth > MAX_DEPTH:
                raise DocumentTooLargeError(f"nested deeper than {MAX_DEPTH} levels",
                                            key=key, path=(path or "/")[:80], kind=kind)
            if node_type is dict:
                for name, child in node.items():
                    if type(name) is not str:
                        raise ValidationError(f"object key {name!r} is not a string",
                                              key=key, path=path or "/", kind=kind)
                    if _has_surrogate(name):
                        raise ValidationError("field name holds a lone surrogate", key=key,
                                              path=path or "/", kind=kind)
                    stack.append((child, f"{path}/{name}" if path else name, depth + 1))
            else:
                stack.extend((child, f"{path}/{index}", depth + 1)
                             for index, child in enumerate(node))
        elif node_type is float:
            if not math.isfinite(node):
                raise ValidationError(f"{node} cannot be stored: JSON has no NaN or "
                                      "infinity", key=key, path=path or "/", kind=kind)
        elif node_type is int:
            if not -(2**63) <= node < 2**63:
                raise DocumentTooLargeError("integer is outside the signed 64-bit range "
                                            "every store keeps", key=key, path=path or "/",
                                            kind=kind)
        elif node is None or node_type is bool:
            pass
        else:
            raise ValidationError(f"{node_type.__name__} is not a JSON value", key=key,
                                  path=path or "/", kind=kind)


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def decode_document(value: bytes, *, key: str | None = None) -> dict[str, Any]:
    """Parse stored bytes into a document of the newest version, or raise a typed error:
    an undecodable document never reads as missing."""
    try:
        document = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise ValidationError(f"stored value is not valid JSON: {exc}", key=key) from None
    if type(document) is not dict:
        raise ValidationError(
            f"stored value is a JSON {type(document).__name__}, not an object", key=key)
    return upgrade_document(document, key=key)


# ---------------------------------------------------------------------------- versions

def register_upcaster(kind: str, version: int, upcaster: Upcaster) -> None:
    """Teach the codec to turn a ``kind`` document of ``version`` into ``version + 1``."""
    _UPCASTERS[(kind, version)] = upcaster


def _session_v1_to_v2(document: dict[str, Any]) -> dict[str, Any]:
    """Version 2 adds the revision (a head written before it reads as revision 0) and the
    optional owner (none)."""
    return {**document, "v": 2, "revision": 0}


def upgrade_document(document: dict[str, Any], *, key: str | None = None) -> dict[str, Any]:
    """Upcast ``document`` to the newest version of its kind, one step at a time, checking that
    every step advances the version. The input is not changed."""
    kind = document.get("kind")
    if not isinstance(kind, str) or kind not in CURRENT_VERSIONS:
        raise ValidationError(f"unknown document kind {kind!r}; known: "
                              f"{', '.join(sorted(CURRENT_VERSIONS))}", key=key, path="kind")
    version = document.get("v")
    if type(version) is not int or version < 0:
        raise ValidationError(f"version must be a whole number, not {version!r}", key=key,
                              path="v", kind=kind)
    current = CURRENT_VERSIONS[kind]
    if version > current:
        raise UnsupportedVersionError(
            f"version {version} is newer than this release reads (newest: {current}); "
            "upgrade kvsessions", key=key, path="v", kind=kind)
    while version < current:
        upcaster = _UPCASTERS.get((kind, version))
        if upcaster is None:
            raise UnsupportedVersionError(
                f"no upcaster from version {version}", key=key, path="v", kind=kind)
        document = upcaster(dict(document))
        new_version = document.get("v")
        if type(new_version) is not int or new_version <= version:
            raise UnsupportedVersionError(
                f"upcaster from version {version} did not advance the version", key=key,
                path="v", kind=kind)
        version = new_version
    return document


register_upcaster("session", 1, _session_v1_to_v2)
