"""Migration on the KV level: every pair of stores, verify, resume, validation and upgrade,
export/import/backup round trips and corrupt export files."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from kvsessions.documents import codec
from kvsessions.documents import keys as layout
from kvsessions.documents.models import ChatSession, UploadedFileRecord
from kvsessions.errors import ConfigError, KVSessionsError
from kvsessions.kv.base import KeyRange, KVStore
from kvsessions.kv.memory import MemoryStore
from kvsessions.kv.values import reserved_keys_allowed
from kvsessions.migration import (
    RESERVED_PREFIX,
    MigrationProgress,
    backup_storage,
    checkpoint_key,
    export_to_json,
    import_from_json,
    migrate_storage,
    upgrade_storage,
    validate_storage,
    verify_migration,
)
from kvsessions.migration.jsonl import ExportFileError
from kvsessions.testing import same_json
from kvsessions.testing.contract import HARD_VALUES

#: The stores every ordered pair of which must migrate (issue 6).
PAIR_BACKENDS = ["file", "sqlite", "postgresql", "mongodb", "redis"]


def sample_documents(sessions: int = 3, messages: int = 8, files: int = 2) -> dict[str, bytes]:
    """Session heads, messages and file records in the SessionStorage key layout, plus the
    contract's hard values under keys of their own."""
    documents: dict[str, bytes] = {}
    for s in range(sessions):
        session = ChatSession.create("gemini-2.5-flash", metadata={"n": s, "tag": "é😀"})
        for m in range(messages):
            message = session.add_message("user" if m % 2 == 0 else "assistant",
                                          f"message {m} of session {s} \u0000 ok")
            documents[layout.message_key(session.session_id, message.message_id)] = \
                codec.encode_document(codec.message_to_document(message))
        documents[layout.session_key(session.session_id)] = \
            codec.encode_document(codec.session_to_document(session))
    for f in range(files):
        record = UploadedFileRecord.create(f"files/{f}", f"https://example.invalid/{f}",
                                           f"report {f}.pdf", 1000 + f, "application/pdf")
        documents[layout.file_key(record.file_id)] = \
            codec.encode_document(codec.file_to_document(record))
    for name, value in HARD_VALUES.items():
        documents[f"hard:{name}"] = orjson.dumps(value)
    return documents


async def populate(store: KVStore, documents: dict[str, bytes]) -> None:
    await store.put_many(list(documents.items()))


async def contents(store: KVStore) -> dict[str, Any]:
    return {key: orjson.loads(value) async for key, value in store.scan()}


def kind_count(documents: dict[str, bytes], prefix: str) -> int:
    return sum(key.startswith(prefix) for key in documents)


# ---------------------------------------------------------------------- every pair


@pytest.mark.parametrize("source_name", PAIR_BACKENDS)
@pytest.mark.parametrize("destination_name", PAIR_BACKENDS)
async def test_every_pair_copies_everything_and_verifies_equal(
    stores: Callable[[str], KVStore], source_name: str, destination_name: str
) -> None:
    source, destination = stores(source_name), stores(destination_name)
    documents = sample_documents()
    await populate(source, documents)

    result = await migrate_storage(source, destination, batch_size=7)

    assert result["verified"] is True, result["verification"]
    assert result["documents_copied"] == len(documents)
    assert result["sessions_migrated"] == kind_count(documents, "session:") == 3
    assert result["messages_migrated"] == kind_count(documents, "message:") == 24
    assert result["files_migrated"] == kind_count(documents, "file:") == 2
    assert result["resumed_from"] is None
    # The hard values have no kind: reported as invalid, copied all the same.
    assert result["invalid_documents"] == len(HARD_VALUES)
    assert sorted(entry["key"] for entry in result["invalid"]) == sorted(
        f"hard:{name}" for name in HARD_VALUES)
    copied = await contents(destination)
    assert copied.keys() == documents.keys()  # and so no checkpoint key is left behind
    for key, value in documents.items():
        assert same_json(copied[key], orjson.loads(value)), key


# ---------------------------------------------------------------------- verify


async def test_verify_reports_missing_changed_and_extra_keys() -> None:
    source, destination = MemoryStore(namespace="a"), MemoryStore(namespace="b")
    documents = sample_documents()
    await populate(source, documents)
    await populate(destination, documents)
    assert (await verify_migration(source, destination))["ok"] is True
    keys = sorted(documents)
    await destination.delete(keys[1])
    await destination.put(keys[2], orjson.dumps({"changed": True}))
    await destination.put("zz:extra", orjson.dumps({}))

    result = await verify_migration(source, destination)

    assert result["ok"] is False
    assert (result["missing"], result["missing_count"]) == ([keys[1]], 1)
    assert (result["different"], result["different_count"]) == ([keys[2]], 1)
    assert (result["extra"], result["extra_count"]) == (["zz:extra"], 1)
    assert result["source_count"] == len(documents)
    assert result["destination_count"] == len(documents)
    assert result["matching"] == len(documents) - 2


async def test_verify_compares_json_not_bytes_and_is_strict_about_types() -> None:
    source, destination = MemoryStore(namespace="a"), MemoryStore(namespace="b")
    await source.put_many([("k1", b'{"a":1,"b":[1,2]}'), ("k2", b'{"n":1}'),
                           ("k3", b'{"z":-0.0}'), ("k4", b'{"t":true}')])
    await destination.put_many([("k1", b'{ "b": [1, 2], "a": 1 }'), ("k2", b'{"n":1.0}'),
                                ("k3", b'{"z":0.0}'), ("k4", b'{"t":1}')])
    result = await verify_migration(source, destination)
    assert result["different"] == ["k2", "k3", "k4"]


async def test_verify_lists_at_most_100_keys_but_counts_all() -> None:
    source, destination = MemoryStore(namespace="a"), MemoryStore(namespace="b")
    await source.put_many([(f"k{i:04d}", b"{}") for i in range(250)])
    result = await verify_migration(source, destination, batch_size=16)
    assert result["missing_count"] == 250
    assert result["missing"] == [f"k{i:04d}" for i in range(100)]


async def test_verify_and_export_skip_reserved_keys(tmp_path: Path) -> None:
    """Reserved keys are kvsessions' own (users cannot write them): never copied or exported."""
    source, destination = MemoryStore(namespace="a"), MemoryStore(namespace="b")
    reserved = [RESERVED_PREFIX + "anything"] + [RESERVED_PREFIX + f"r{i}" for i in range(5)]
    await source.put("a", b"{}")
    await destination.put("a", b"{}")
    with reserved_keys_allowed(*reserved):
        await destination.put(RESERVED_PREFIX + "anything", b"{}")
    assert (await verify_migration(source, destination))["ok"] is True
    result = await export_to_json(destination, tmp_path / "x.jsonl")
    assert result["documents_exported"] == 1
    # Reserved keys sort between upper- and lower-case keys: skip them across batch edges.
    around = [(f"A{i:02d}", b"{}") for i in range(7)] + [(f"b{i:02d}", b"{}") for i in range(7)]
    await source.put_many(around)
    with reserved_keys_allowed(*reserved):
        await destination.put_many([(RESERVED_PREFIX + f"r{i}", b"{}") for i in range(5)])
    for size in (1, 3, 4, 100):
        copy = MemoryStore(namespace="c")
        result = await migrate_storage(destination, copy, batch_size=size, validate=False)
        assert result["documents_copied"] == 1
        again = await migrate_storage(source, copy, batch_size=size, validate=False,
                                      merge=True)
        assert again["documents_copied"] == 15 and again["verified"] is True
        assert not [key for key in await copy.keys() if key.startswith(RESERVED_PREFIX)]


# ---------------------------------------------------------------------- streaming


class _ObservedSource(MemoryStore):
    """Sets an event when the scan asks for its second page."""

    def __init__(self) -> None:
        super().__init__(namespace="src")
        self.pages = 0
        self.second_page = asyncio.Event()

    async def _scan_page(self, key_range: KeyRange, reverse: bool,
                         limit: int) -> tuple[list[tuple[str, bytes]], str | None]:
        self.pages += 1
        if self.pages >= 2:
            self.second_page.set()
        return await super()._scan_page(key_range, reverse, limit)


class _WaitingDestination(MemoryStore):
    """Its first ``put_many`` returns only once something else has happened."""

    def __init__(self, wait_for: Callable[[], Awaitable[Any]]) -> None:
        super().__init__(namespace="dst")
        self.calls = 0
        self._wait_for = wait_for

    async def _put_many(self, items: list[tuple[str, bytes]], ttl: float | None) -> None:
        self.calls += 1
        if self.calls == 1:
            await asyncio.wait_for(self._wait_for(), 10)
        await super()._put_many(items, ttl)


async def test_reading_the_next_batch_overlaps_writing_the_last() -> None:
    source = _ObservedSource()
    source.scan_batch_size = 10
    await source.put_many([(f"k{i:03d}", b"{}") for i in range(50)])
    destination = _WaitingDestination(source.second_page.wait)
    # Fails with a timeout if the scan waits for the first write to finish.
    result = await migrate_storage(source, destination, batch_size=10, validate=False)
    assert result["documents_copied"] == 50 and result["verified"] is True


# ---------------------------------------------------------------------- resume


class _CrashingDestination(MemoryStore):
    """Fails its ``put_many`` number ``crash_at`` (1-based), as a killed process would stop."""

    def __init__(self, crash_at: int | None) -> None:
        super().__init__(namespace="dst")
        self.crash_at = crash_at
        self.calls = 0

    async def _put_many(self, items: list[tuple[str, bytes]], ttl: float | None) -> None:
        self.calls += 1
        if self.calls == self.crash_at:
            # Half the batch lands (a non-atomic store), then the "crash".
            await super()._put_many(items[: len(items) // 2], ttl)
            raise ConnectionResetError("simulated crash")
        await super()._put_many(items, ttl)


async def _checkpoint(store: KVStore, prefix: str = "") -> dict[str, Any] | None:
    with reserved_keys_allowed(checkpoint_key(prefix)):
        raw = await store.get(checkpoint_key(prefix))
    return None if raw is None else dict(orjson.loads(raw))


async def _assert_checkpoint_not_ahead(source: KVStore, destination: KVStore) -> None:
    state = await _checkpoint(destination)
    if state is None:
        return
    async for key, value in source.scan():
        if key > state["last_key"]:
            break
        stored = await destination.get(key)
        assert stored == value, f"checkpoint {state['last_key']!r} is ahead of {key!r}"


async def test_resume_after_a_crash_loses_nothing_and_redoes_only_the_last_batches() -> None:
    source = MemoryStore(namespace="src")
    documents = {f"message:s:{i:05d}": orjson.dumps({"i": i}) for i in range(1000)}
    await populate(source, documents)
    destination = _CrashingDestination(crash_at=5)

    with pytest.raises(KVSessionsError):
        await migrate_storage(source, destination, batch_size=100, validate=False)
    state = await _checkpoint(destination)
    assert state is not None and "message:s:00100" < state["last_key"] < "message:s:00500"
    await _assert_checkpoint_not_ahead(source, destination)

    destination.crash_at = 8
    with pytest.raises(KVSessionsError):
        await migrate_storage(source, destination, batch_size=100, validate=False)
    await _assert_checkpoint_not_ahead(source, destination)

    destination.crash_at = None
    seen: list[MigrationProgress] = []
    result = await migrate_storage(source, destination, batch_size=100, validate=False,
                                   progress_callback=seen.append)
    assert result["resumed_from"] is not None
    assert result["documents_copied_before_resume"] + result["documents_copied"] == 1000
    assert 0 < result["documents_copied_before_resume"] < 1000
    assert result["verified"] is True
    assert seen[-1].documents == 1000
    assert await _checkpoint(destination) is None
    assert (await contents(destination)).keys() == documents.keys()


async def test_a_finished_migration_starts_over_next_time_when_merging() -> None:
    source, destination = MemoryStore(namespace="a"), MemoryStore(namespace="b")
    await populate(source, {f"k{i}": b"{}" for i in range(30)})
    await migrate_storage(source, destination, batch_size=7, validate=False)
    with pytest.raises(ConfigError, match="already holds documents"):
        await migrate_storage(source, destination, batch_size=7, validate=False)
    again = await migrate_storage(source, destination, batch_size=7, validate=False, merge=True)
    assert again["resumed_from"] is None and again["documents_copied"] == 30


async def _plant_checkpoint(destination: KVStore, state: dict[str, Any]) -> None:
    with reserved_keys_allowed(checkpoint_key("")):
        await destination.put(checkpoint_key(""), orjson.dumps(state))


async def test_no_resume_or_another_migration_ignores_the_checkpoint() -> None:
    source, destination = MemoryStore(namespace="a"), MemoryStore(namespace="b")
    await populate(source, {f"k{i:02d}": b"{}" for i in range(30)})
    stale = {"last_key": "k20", "copied": 21,
             "identity": {"source": "SomewhereElse()", "prefix": "", "upgrade": False}}
    await _plant_checkpoint(destination, stale)
    result = await migrate_storage(source, destination, validate=False)
    assert result["resumed_from"] is None and result["documents_copied"] == 30

    stale["identity"] = {"source": repr(source), "prefix": "", "upgrade": False}
    await _plant_checkpoint(destination, stale)
    result = await migrate_storage(source, destination, validate=False, resume=False)
    assert result["resumed_from"] is None and result["documents_copied"] == 30

    await _plant_checkpoint(destination, stale)
    result = await migrate_storage(source, destination, validate=False)
    assert result["resumed_from"] == "k20" and result["documents_copied"] == 9


async def test_prefix_dry_run_and_progress() -> None:
    source, destination = MemoryStore(namespace="a"), MemoryStore(namespace="b")
    documents = sample_documents()
    await populate(source, documents)
    calls: list[int] = []

    async def progress(update: MigrationProgress) -> None:
        calls.append(update.documents)

    dry = await migrate_storage(source, destination, dry_run=True, prefix="message:",
                                progress_callback=progress, batch_size=5)
    assert dry["dry_run"] is True and dry["documents_copied"] == 24
    assert await destination.keys() == []
    assert calls == sorted(calls) and calls[-1] == 24

    result = await migrate_storage(source, destination, prefix="session:")
    assert result["documents_copied"] == result["sessions_migrated"] == 3
    assert result["invalid_documents"] == 0
    assert all(key.startswith("session:") for key in await destination.keys())


async def test_bad_arguments_are_refused() -> None:
    store = MemoryStore(namespace="a")
    with pytest.raises(KVSessionsError):
        await migrate_storage(store, store)
    with pytest.raises(KVSessionsError):
        await migrate_storage(store, MemoryStore(namespace="b"), batch_size=0)
    with pytest.raises(TypeError):
        await migrate_storage(object(), store)


async def test_a_storage_object_with_a_store_attribute_is_accepted() -> None:
    class Holder:
        def __init__(self, store: KVStore) -> None:
            self.store = store

    source, destination = MemoryStore(namespace="a"), MemoryStore(namespace="b")
    await source.put("k", b"{}")
    result = await migrate_storage(Holder(source), Holder(destination), validate=False)
    assert result["documents_copied"] == 1 and result["verified"] is True


# ---------------------------------------------------------------------- validate / upgrade


@pytest.fixture
def message_v0_upcaster() -> Any:
    """Teach the codec a 'message' version 0 (``text`` instead of ``content``) for the test."""
    def upcast(document: dict[str, Any]) -> dict[str, Any]:
        document["content"] = document.pop("text")
        document["v"] = 1
        return document

    codec.register_upcaster("message", 0, upcast)
    yield upcast
    codec._UPCASTERS.pop(("message", 0), None)


def _old_message(document: bytes) -> bytes:
    old = orjson.loads(document)
    old["v"] = 0
    old["text"] = old.pop("content")
    return orjson.dumps(old)


async def test_upgrade_on_the_way_and_verify_with_upgrade(message_v0_upcaster: Any) -> None:
    source, destination = MemoryStore(namespace="a"), MemoryStore(namespace="b")
    documents = sample_documents(sessions=1, messages=4, files=0)
    old = {k: (_old_message(v) if k.startswith("message:") else v) for k, v in documents.items()}
    await populate(source, old)

    result = await migrate_storage(source, destination, upgrade=True)

    assert result["documents_upgraded"] == 4
    assert result["verified"] is True
    assert result["invalid_documents"] == len(HARD_VALUES)
    copied = await contents(destination)
    for key, value in documents.items():
        assert same_json(copied[key], orjson.loads(value)), key
    # Without upgrade the same two stores differ exactly in the upgraded documents.
    plain = await verify_migration(source, destination)
    assert plain["different_count"] == 4


async def test_validate_and_upgrade_in_place(message_v0_upcaster: Any) -> None:
    store = MemoryStore(namespace="a")
    documents = sample_documents(sessions=1, messages=3, files=1)
    await populate(store, {k: (_old_message(v) if k.startswith("message:") else v)
                           for k, v in documents.items()})
    await store.put("session:broken", orjson.dumps(
        {"kind": "session", "v": codec.CURRENT_VERSIONS["session"]}))

    report = await validate_storage(store)
    assert report["ok"] is False
    assert report["outdated_documents"] == 3
    invalid_keys = {entry["key"] for entry in report["invalid"]}
    assert "session:broken" in invalid_keys
    # Version 0 has no schema file in this test: the old messages count as invalid until
    # they are upgraded.
    assert report["invalid_documents"] == len(HARD_VALUES) + 1 + 3

    upgraded = await upgrade_storage(store, batch_size=2)
    assert upgraded["documents_upgraded"] == 3
    after = await validate_storage(store)
    assert after["outdated_documents"] == 0
    assert after["invalid_documents"] == len(HARD_VALUES) + 1
    for key, value in documents.items():
        assert same_json(orjson.loads(await store.get(key) or b""), orjson.loads(value))


# ---------------------------------------------------------------------- export / import


@pytest.mark.parametrize("name", ["dump.jsonl", "dump.jsonl.gz", "dump.json", "dump.json.gz"])
async def test_export_import_round_trip(tmp_path: Path, name: str) -> None:
    source, target = MemoryStore(namespace="a"), MemoryStore(namespace="b")
    documents = sample_documents()
    await populate(source, documents)
    path = tmp_path / name

    exported = await export_to_json(source, path, batch_size=4)
    imported = await import_from_json(target, path, batch_size=5)

    assert exported["documents_exported"] == imported["documents_imported"] == len(documents)
    assert exported["sessions_exported"] == imported["sessions_imported"] == 3
    assert exported["sha256"] == imported["sha256"]
    assert exported["size_bytes"] == path.stat().st_size
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == name.endswith(".gz")
    assert not [p for p in tmp_path.iterdir() if p.name != name]  # no temporary file left
    assert (await verify_migration(source, target))["ok"] is True


async def test_json_document_is_one_json_value(tmp_path: Path) -> None:
    source = MemoryStore(namespace="a")
    documents = sample_documents(sessions=1, messages=2, files=1)
    await populate(source, documents)
    await export_to_json(source, tmp_path / "backup.json")
    whole = orjson.loads((tmp_path / "backup.json").read_bytes())
    assert whole["format"] == "kvsessions-json" and whole["count"] == len(documents)
    assert [entry["key"] for entry in whole["documents"]] == sorted(documents)


async def test_backup_writes_a_timestamped_gzip_export(tmp_path: Path) -> None:
    source, target = MemoryStore(namespace="a"), MemoryStore(namespace="b")
    documents = sample_documents()
    await populate(source, documents)
    first = await backup_storage(source, tmp_path / "backups")
    second = await backup_storage(source, tmp_path / "backups")
    assert first["path"] != second["path"]
    path = Path(first["path"])
    assert path.parent == tmp_path / "backups" and path.name.startswith("kvsessions-backup-")
    assert path.name.endswith(".jsonl.gz") and first["size_bytes"] == path.stat().st_size
    assert first["documents_exported"] == len(documents)
    await import_from_json(target, path)
    assert (await verify_migration(source, target))["ok"] is True


# ---------------------------------------------------------------------- corrupt files


async def _exported_lines(tmp_path: Path, name: str = "dump.jsonl") -> tuple[Path, list[bytes]]:
    source = MemoryStore(namespace="a")
    await populate(source, sample_documents(sessions=1, messages=5, files=1))
    path = tmp_path / name
    await export_to_json(source, path)
    raw = gzip.decompress(path.read_bytes()) if name.endswith(".gz") else path.read_bytes()
    return path, raw.split(b"\n")


async def _refused(path: Path, line: int | None, words: str) -> None:
    target = MemoryStore(namespace="t")
    await target.put("existing", b'{"kept":true}')
    with pytest.raises(ExportFileError) as caught:
        await import_from_json(target, path)
    assert caught.value.line == line, str(caught.value)
    assert words in str(caught.value)
    if line is not None:
        assert f"line {line}" in str(caught.value)
    assert await target.keys() == ["existing"]  # nothing written


def _flip_inside_content(line: bytes) -> bytes:
    at = line.index(b"message 0")
    return line[:at] + b"n" + line[at + 1:]  # still valid JSON


async def test_a_changed_byte_is_refused_with_its_line(tmp_path: Path) -> None:
    path, lines = await _exported_lines(tmp_path)
    target = next(i for i, line in enumerate(lines) if b"message 0" in line)
    lines[target] = _flip_inside_content(lines[target])
    path.write_bytes(b"\n".join(lines))
    await _refused(path, target + 1, "checksum mismatch")


async def test_a_byte_that_breaks_the_json_is_refused_with_its_line(tmp_path: Path) -> None:
    path, lines = await _exported_lines(tmp_path)
    lines[3] = lines[3].replace(b'"key"', b'"key', 1)
    path.write_bytes(b"\n".join(lines))
    await _refused(path, 4, "not valid JSON")


async def test_reordered_lines_are_refused_with_the_line(tmp_path: Path) -> None:
    path, lines = await _exported_lines(tmp_path)
    lines[3], lines[4] = lines[4], lines[3]
    path.write_bytes(b"\n".join(lines))
    await _refused(path, 5, "out of order")


async def test_a_repeated_line_is_refused(tmp_path: Path) -> None:
    path, lines = await _exported_lines(tmp_path)
    lines.insert(3, lines[2])
    path.write_bytes(b"\n".join(lines))
    await _refused(path, 4, "out of order")


async def test_a_removed_line_is_refused(tmp_path: Path) -> None:
    path, lines = await _exported_lines(tmp_path)
    del lines[3]
    path.write_bytes(b"\n".join(lines))
    manifest_line = next(i for i, line in enumerate(lines) if line.startswith(b'{"manifest"'))
    await _refused(path, manifest_line + 1, "lines were removed")


async def test_a_truncated_file_is_refused(tmp_path: Path) -> None:
    path, lines = await _exported_lines(tmp_path)
    manifest_at = next(i for i, line in enumerate(lines) if line.startswith(b'{"manifest"'))
    path.write_bytes(b"\n".join(lines[:manifest_at]) + b"\n")
    await _refused(path, None, f"ends after line {manifest_at} without its closing manifest")
    path.write_bytes(b"\n".join(lines)[:-40])  # cut inside the manifest line
    await _refused(path, manifest_at + 1, "not valid JSON")


async def test_a_truncated_gzip_file_is_refused(tmp_path: Path) -> None:
    path, _ = await _exported_lines(tmp_path, "dump.jsonl.gz")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    await _refused(path, None, "gzip stream is truncated")


async def test_a_changed_json_document_is_refused_with_its_line(tmp_path: Path) -> None:
    path, lines = await _exported_lines(tmp_path, "dump.json")
    target = next(i for i, line in enumerate(lines) if b"message 0" in line)
    lines[target] = _flip_inside_content(lines[target])
    path.write_bytes(b"\n".join(lines))
    await _refused(path, target + 1, "checksum mismatch")
    path.write_bytes(b"\n".join(lines)[:-30])
    with pytest.raises(ExportFileError, match="not valid JSON"):
        await import_from_json(MemoryStore(namespace="t"), path)


async def test_a_file_that_is_not_an_export_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.jsonl"
    path.write_bytes(b'{"key":"a","value":{}}\n')
    await _refused(path, 1, "not a kvsessions JSON Lines export")
    path.write_bytes(b"")
    await _refused(path, None, "empty")
