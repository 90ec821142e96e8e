"""JSON Schema validation of versioned documents.

The schemas are the files in ``kvsessions/documents/schemas/`` (``{kind}.v{version}.json``, Draft
2020-12), loaded through ``importlib.resources`` so they ship inside the wheel, and compiled
once with jsonschema-rs (chosen by measurement: see ``scripts/benchmarks/validators.py``).
Validation never changes the document, and its errors stay short for huge documents.
"""

from __future__ import annotations

import functools
import importlib.resources
from typing import Any

import jsonschema_rs
import orjson

from kvsessions.documents.codec import CURRENT_VERSIONS
from kvsessions.documents.keys import kind_of_key
from kvsessions.errors import UnsupportedVersionError, ValidationError

__all__ = ["all_valid", "load_schema", "schema_names", "validate_document"]


def schema_names() -> list[str]:
    """The schema files that ship with the package, e.g. ``session.v1.json``."""
    folder = importlib.resources.files("kvsessions.documents") / "schemas"
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".json"))


@functools.cache
def load_schema(kind: str, version: int) -> dict[str, Any]:
    path = importlib.resources.files("kvsessions.documents") / "schemas" / f"{kind}.v{version}.json"
    try:
        schema: dict[str, Any] = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise UnsupportedVersionError(f"no schema for version {version}", kind=kind,
                                      path="v") from None
    return schema


@functools.cache
def _validator(kind: str, version: int) -> Any:
    # Formats on: the pattern says "UTC", the date-time format says "a real date" (no Feb 31).
    return jsonschema_rs.validator_for(load_schema(kind, version), validate_formats=True)


@functools.cache
def _list_validator(kind: str, version: int) -> Any:
    """The schema of ``kind`` and ``version`` as the items of an array (its ``$defs`` at the
    root, where its references point)."""
    schema = load_schema(kind, version)
    items = {name: part for name, part in schema.items()
             if name not in ("$schema", "$id", "$defs")}
    listed = {"$schema": schema["$schema"], "type": "array", "items": items}
    if "$defs" in schema:
        listed["$defs"] = schema["$defs"]
    return jsonschema_rs.validator_for(listed, validate_formats=True)


def all_valid(documents: list[Any], kind: str, version: int) -> bool:
    """Whether every one of ``documents`` meets the schema of ``kind`` and ``version``: a page
    of documents checked in one call, at a fraction of the cost of one call per document. No
    error says which one is wrong: a reader then takes them one by one
    (``validate_document``). JSON Schema takes 1.0 for 1: a caller that reads ``v`` checks
    that it is an int (as ``validate_document`` does)."""
    return bool(_list_validator(kind, version).is_valid(documents))


def validate_document(document: Any, *, key: str | None = None) -> None:
    """Raise ``ValidationError`` naming the key, the field path and the reason when
    ``document`` does not match the schema of its kind and version."""
    if type(document) is not dict:
        raise ValidationError(f"a document is a JSON object, not {type(document).__name__}",
                              key=key)
    kind = document.get("kind")
    if not isinstance(kind, str) or kind not in CURRENT_VERSIONS:
        raise ValidationError(f"unknown document kind {kind!r}; known: "
                              f"{', '.join(sorted(CURRENT_VERSIONS))}", key=key, path="kind")
    version = document.get("v")
    if type(version) is not int:
        raise ValidationError(f"version must be a whole number, not {version!r}", key=key,
                              path="v", kind=kind)
    if version > CURRENT_VERSIONS[kind]:
        raise UnsupportedVersionError(
            f"version {version} is newer than this release reads (newest: "
            f"{CURRENT_VERSIONS[kind]})", key=key, path="v", kind=kind)
    expected = kind_of_key(key) if key else None
    if expected is not None and kind != expected:
        raise ValidationError(f"a {kind!r} document under a {expected!r} key", key=key,
                              path="kind", kind=kind)
    try:
        validator = _validator(kind, version)
    except UnsupportedVersionError as exc:
        raise UnsupportedVersionError(exc.reason, key=key, path="v", kind=kind) from None
    if validator.is_valid(document):
        return
    error = next(iter(validator.iter_errors(document)))
    path = "/".join(str(part) for part in error.instance_path) or "/"
    if error.schema_path and error.schema_path[-1] in ("pattern", "format"):
        # The only patterns and formats in the schemas are the UTC timestamps; say so.
        shown = repr(error.instance)[:60]
        message = f"{shown} is not an ISO 8601 UTC timestamp like 2026-11-21T10:00:00Z"
    elif error.schema_path and error.schema_path[-1] == "enum":
        message = _not_one_of(error.instance, error.kind.options)
    else:
        message = error.message if len(error.message) <= 200 else error.message[:200] + "..."
    raise ValidationError(message, key=key, path=path, kind=kind)


def _not_one_of(value: Any, allowed: list[Any]) -> str:
    """Every allowed value named (jsonschema-rs names two and counts the rest): a reader
    should not have to open the schema to learn that "tool" is a role."""
    listed = ", ".join(orjson.dumps(option).decode() for option in allowed)
    shown = orjson.dumps(value).decode() if _short_json(value) else repr(value)[:60] + "..."
    return f"{shown} is not one of {listed}"


def _short_json(value: Any) -> bool:
    return isinstance(value, str | int | float | bool) and len(str(value)) <= 60
