"""The export file formats: JSON Lines (streamed) and one JSON document, both self-checking.

JSON Lines (any name not ending in ``.json`` / ``.json.gz``)::

    {"format":"kvsessions-jsonl","version":1,"exported_at":"...","source":"...","prefix":""}
    {"key":"file:f1","value":{...},"crc32":1234567}
    {"key":"message:s1:m1","value":{...},"crc32":89012}
    {"manifest":{"count":2,"sha256":"..."}}

One JSON document (a name ending in ``.json``), one document entry a line::

    {"format":"kvsessions-json","version":1,"exported_at":"...","documents":[
    {"key":"file:f1","value":{...},"crc32":1234567},
    {"key":"message:s1:m1","value":{...},"crc32":89012}
    ],"count":2,"sha256":"..."}

Why the checks: an entry's ``crc32`` covers its own ``{"key":..,"value":..}`` bytes, so a changed
byte is reported with its line; keys are strictly ascending, so a moved or repeated line is
reported with its line; the closing count and SHA-256 (over every entry's ``{"key","value"}`` line
and a newline, in order) catch removed lines and truncation. Values are written in orjson's
canonical form, so both formats hash the same documents to the same SHA-256. A ``.gz`` suffix
means gzip. Files are written through ``kvsessions.atomic_file`` (an unpredictable temporary name,
never a planted link), fsynced and renamed, so a crashed export never leaves a file that looks
complete.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import zlib
from collections.abc import Generator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, cast

import orjson

from kvsessions.atomic_file import AtomicFile
from kvsessions.errors import ExportFileError, KVSessionsError
from kvsessions.kv.values import check_key, check_value

__all__ = [
    "JSONL_FORMAT",
    "JSON_FORMAT",
    "ExportFileError",
    "ExportReader",
    "ExportWriter",
    "is_json_document_name",
    "utc_timestamp",
]

JSONL_FORMAT = "kvsessions-jsonl"
JSON_FORMAT = "kvsessions-json"
FORMAT_VERSION = 1
_CRC_MARK = b',"crc32":'


def is_json_document_name(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` names the single-JSON-document format (``.json``, ``.json.gz``)."""
    name = str(path).lower()
    if name.endswith(".gz"):
        name = name[:-3]
    return name.endswith(".json")


def _is_gzip_name(path: str | os.PathLike[str]) -> bool:
    return str(path).lower().endswith(".gz")


def utc_timestamp() -> str:
    """Now, as the ISO 8601 UTC text (whole seconds, ``Z``) that exports and checkpoints carry."""
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _entry_body(key: str, document: Any) -> bytes:
    return orjson.dumps({"key": key, "value": document})


def _entry_line(body: bytes) -> bytes:
    """An entry as written: its ``{"key","value"}`` body with the body's CRC-32 added last."""
    return b"%s%s%d}" % (body[:-1], _CRC_MARK, zlib.crc32(body))


class ExportWriter:
    """Writes one export file, entry by entry, in ascending key order (the caller's scan order).
    Blocking file I/O: call from a worker thread for big exports."""

    def __init__(self, path: str | os.PathLike[str], *, source: str = "", prefix: str = "") -> None:
        self.path = Path(path)
        self.json_document = is_json_document_name(self.path)
        self.count = 0
        self._sha = hashlib.sha256()
        self._file = AtomicFile(self.path)
        self._raw: IO[bytes] = self._file.stream
        self._out: IO[bytes] = self._raw
        if _is_gzip_name(self.path):
            self._out = cast(IO[bytes], gzip.GzipFile(
                fileobj=self._raw, mode="wb", compresslevel=6, mtime=0))
        header: dict[str, Any] = {
            "format": JSON_FORMAT if self.json_document else JSONL_FORMAT,
            "version": FORMAT_VERSION,
            "exported_at": utc_timestamp(),
            "source": source,
            "prefix": prefix,
        }
        encoded = orjson.dumps(header)
        if self.json_document:
            self._out.write(encoded[:-1] + b',"documents":[\n')
        else:
            self._out.write(encoded + b"\n")
        self._last_key: str | None = None

    def write(self, items: list[tuple[str, bytes]]) -> None:
        """Append entries (key, stored value bytes); keys must ascend across calls."""
        lines: list[bytes] = []
        sha = self._sha
        for key, value in items:
            if self._last_key is not None and key <= self._last_key:
                raise ValueError(f"export keys must ascend: {key!r} after {self._last_key!r}")
            self._last_key = key
            body = _entry_body(key, orjson.loads(value))
            sha.update(body + b"\n")
            line = _entry_line(body)
            if self.json_document:
                lines.append(b",\n" + line if self.count else line)
            else:
                lines.append(line + b"\n")
            self.count += 1
        self._out.write(b"".join(lines))

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()

    def close(self) -> int:
        """Write the closing manifest, make the file durable and give it its name; its size."""
        if self.json_document:
            tail = orjson.dumps({"count": self.count, "sha256": self.sha256})
            self._out.write(b"\n]," + tail[1:] + b"\n")
        else:
            manifest = {"manifest": {"count": self.count, "sha256": self.sha256}}
            self._out.write(orjson.dumps(manifest) + b"\n")
        if self._out is not self._raw:
            self._out.close()
        return self._file.commit()

    def abort(self) -> None:
        """Drop the partial file (after an error or a cancellation)."""
        with contextlib.suppress(Exception):  # best effort: an error is already on its way
            self._out.close()
        self._file.abort()


class ExportReader:
    """Reads an export file. ``check()`` walks the whole file and raises ``ExportFileError``
    naming the line of the first problem; only then does ``batches()`` hand out entries."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.json_document = is_json_document_name(self.path)
        self.count = 0
        self.sha256 = ""
        self.header: dict[str, Any] = {}
        self._json_entries: list[tuple[str, bytes]] | None = None

    def _open(self) -> IO[bytes]:
        if _is_gzip_name(self.path):
            return cast(IO[bytes], gzip.open(self.path, "rb"))
        return open(self.path, "rb")

    def _error(self, reason: str, line: int | None = None) -> ExportFileError:
        return ExportFileError(self.path, reason, line=line)

    # ------------------------------------------------------------------ checking

    def check(self) -> None:
        if self.json_document:
            self._check_json_document()
        else:
            for _ in self._jsonl_entries(verify=True):
                pass

    def _check_entry(self, line: int, key: object, value: object, previous: str | None) -> bytes:
        """The stored form of one entry's value, after checking key order and value rules."""
        if type(key) is not str:
            raise self._error("entry has no string 'key'", line)
        try:
            check_key(key)
        except KVSessionsError as exc:
            raise self._error(f"bad key: {exc}", line) from None
        if previous is not None and key <= previous:
            raise self._error(
                f"key {key[:80]!r} is out of order (not after {previous[:80]!r} on the line "
                "before): lines were moved or repeated", line)
        if type(value) is not dict:
            raise self._error(f"the value of {key[:80]!r} is not a JSON object", line)
        encoded = orjson.dumps(value)
        try:
            check_value(encoded, key=key)
        except KVSessionsError as exc:
            raise self._error(str(exc), line) from None
        return encoded

    def _jsonl_entries(self, *, verify: bool) -> Iterator[tuple[str, bytes]]:
        sha = hashlib.sha256()
        count = 0
        previous: str | None = None
        manifest: dict[str, Any] | None = None
        manifest_line = lineno = 0
        try:
            with self._open() as handle:
                for lineno, raw_line in enumerate(handle, start=1):
                    line = raw_line.rstrip(b"\n")
                    if manifest is not None:
                        if line.strip():
                            raise self._error("data after the closing manifest line", lineno)
                        continue
                    try:
                        record = orjson.loads(line)
                    except orjson.JSONDecodeError as exc:
                        raise self._error(f"not valid JSON ({exc})", lineno) from None
                    if type(record) is not dict:
                        raise self._error("not a JSON object", lineno)
                    if lineno == 1:
                        if record.get("format") != JSONL_FORMAT:
                            raise self._error(
                                f"not a kvsessions JSON Lines export (no {JSONL_FORMAT!r} header)",
                                1)
                        if record.get("version") != FORMAT_VERSION:
                            raise self._error(
                                f"export format version {record.get('version')!r} is not "
                                f"supported (this release reads {FORMAT_VERSION})", 1)
                        self.header = record
                        continue
                    if "manifest" in record and "key" not in record:
                        manifest = record["manifest"]
                        manifest_line = lineno
                        if set(record) != {"manifest"} or type(manifest) is not dict:
                            raise self._error("malformed manifest", lineno)
                        continue
                    body = self._checked_body(record, line, lineno)
                    key = record["key"]
                    value = self._check_entry(lineno, key, record["value"], previous)
                    previous = key
                    sha.update(body + b"\n")
                    count += 1
                    yield key, value
        except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise self._error(
                f"the gzip stream is truncated or corrupt after line {lineno} ({exc})") from None
        if lineno == 0:
            raise self._error("the file is empty")
        if manifest is None:
            raise self._error(
                f"truncated: the file ends after line {lineno} without its closing manifest line")
        if verify:
            self._check_totals(manifest.get("count"), manifest.get("sha256"), count, sha,
                               manifest_line)

    def _checked_body(self, record: dict[str, Any], line: bytes, lineno: int) -> bytes:
        """The ``{"key","value"}`` bytes the checksum covers, after checking that the line is
        exactly those bytes and their checksum: the key and value used are the ones covered.
        (A line parsed loosely could carry a second ``"value"`` after its checksum, which a JSON
        parser lets win over the covered one.)"""
        if set(record) != {"key", "value", "crc32"} or type(record["crc32"]) is not int:
            raise self._error("not an export entry (expected key, value and crc32)", lineno)
        body = _entry_body(record["key"], record["value"])
        if zlib.crc32(body) != record["crc32"] or line != _entry_line(body):
            raise self._error("checksum mismatch: the line was changed", lineno)
        return body

    def _check_totals(
        self, count: object, digest: object, seen: int, sha: Any, line: int | None
    ) -> None:
        if count != seen:
            raise self._error(
                f"the manifest announces {count!r} documents but the file holds {seen}: "
                "lines were removed or added", line)
        if digest != sha.hexdigest():
            raise self._error(
                "the SHA-256 of the documents does not match the manifest: lines were changed, "
                "moved or removed", line)
        self.count = seen
        self.sha256 = sha.hexdigest()

    def _check_json_document(self) -> None:
        with self._open() as handle:
            try:
                raw = handle.read()
            except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
                raise self._error(f"the gzip stream is truncated or corrupt ({exc})") from None
        try:
            document = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            reason = "not valid JSON (truncated or changed)"
            raise self._error(f"{reason}: {exc.msg} at column {exc.colno}", exc.lineno) from None
        if type(document) is not dict or document.get("format") != JSON_FORMAT:
            raise self._error(f"not a kvsessions JSON export (no {JSON_FORMAT!r} format)", 1)
        if document.get("version") != FORMAT_VERSION:
            raise self._error(f"export format version {document.get('version')!r} is not "
                              f"supported (this release reads {FORMAT_VERSION})", 1)
        entries = document.get("documents")
        if type(entries) is not list:
            raise self._error("no 'documents' list", 1)
        # Our own layout puts one entry a line after the header line: name lines when it holds.
        own_layout = raw.count(b"\n") == len(entries) + 2
        sha = hashlib.sha256()
        previous: str | None = None
        checked: list[tuple[str, bytes]] = []
        for index, entry in enumerate(entries):
            line = index + 2 if own_layout else None
            where = "" if own_layout else f"document {index + 1}: "
            if type(entry) is not dict or set(entry) != {"key", "value", "crc32"}:
                raise self._error(f"{where}not an export entry (expected key, value and crc32)",
                                  line)
            body = _entry_body(entry["key"], entry["value"])
            if type(entry["crc32"]) is not int or zlib.crc32(body) != entry["crc32"]:
                raise self._error(f"{where}checksum mismatch: the entry was changed", line)
            value = self._check_entry(line or index + 1, entry["key"], entry["value"], previous)
            previous = entry["key"]
            sha.update(body + b"\n")
            checked.append((entry["key"], value))
        self._check_totals(document.get("count"), document.get("sha256"), len(checked), sha,
                           None)
        self.header = {k: v for k, v in document.items() if k != "documents"}
        self._json_entries = checked

    # ------------------------------------------------------------------ reading

    def batches(self, size: int) -> Generator[list[tuple[str, bytes]], None, None]:
        """Entries in batches, read again from the file (call ``check()`` first)."""
        if self._json_entries is not None:
            for start in range(0, len(self._json_entries), size):
                yield self._json_entries[start:start + size]
            return
        batch: list[tuple[str, bytes]] = []
        for item in self._jsonl_entries(verify=False):
            batch.append(item)
            if len(batch) >= size:
                yield batch
                batch = []
        if batch:
            yield batch
