"""Hostile files around exports (issue 11, item 13): a symlink planted where an export (or a
session export) would write, and an export line that carries data its checksum does not cover."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest

from kvsessions.atomic_file import AtomicFile, write_file_atomically
from kvsessions.kv.memory import MemoryStore
from kvsessions.migration import ExportFileError, export_to_json, import_from_json
from kvsessions.sessions.manager import SessionManager
from kvsessions.sessions.storage import SessionStorage
from tests.test_migration import populate, sample_documents

VICTIM_TEXT = b"precious: must not change\n"


def _victim(tmp_path: Path) -> Path:
    victim = tmp_path / "elsewhere" / "victim.txt"
    victim.parent.mkdir()
    victim.write_bytes(VICTIM_TEXT)
    return victim


def _plant_links(folder: Path, name: str, victim: Path) -> list[Path]:
    """Symlinks at every temporary name an attacker could predict for ``name``: the one the
    export used to write through (``.NAME.<pid>.partial``), for nearby pids too."""
    links = []
    for pid in range(max(os.getpid() - 5, 1), os.getpid() + 6):
        link = folder / f".{name}.{pid}.partial"
        link.symlink_to(victim)
        links.append(link)
    return links


@pytest.mark.parametrize("name", ["dump.jsonl", "dump.jsonl.gz", "dump.json"])
async def test_export_never_writes_through_a_planted_symlink(tmp_path: Path, name: str) -> None:
    victim = _victim(tmp_path)
    out = tmp_path / "exports"
    out.mkdir()
    links = _plant_links(out, name, victim)
    source, target = MemoryStore(namespace="a"), MemoryStore(namespace="b")
    documents = sample_documents(sessions=1, messages=3, files=1)
    await populate(source, documents)

    result = await export_to_json(source, out / name)

    assert victim.read_bytes() == VICTIM_TEXT
    assert all(link.is_symlink() for link in links)  # left alone, not used
    assert not (out / name).is_symlink()
    assert (out / name).stat().st_mode & 0o777 == 0o600
    assert result["documents_exported"] == len(documents)
    await import_from_json(target, out / name)
    assert sorted(await target.keys()) == sorted(documents)


async def test_export_replaces_a_symlink_at_the_destination_instead_of_following_it(
    tmp_path: Path
) -> None:
    victim = _victim(tmp_path)
    destination = tmp_path / "dump.jsonl"
    destination.symlink_to(victim)
    source = MemoryStore(namespace="a")
    await populate(source, sample_documents(sessions=1, messages=1, files=0))

    await export_to_json(source, destination)

    assert victim.read_bytes() == VICTIM_TEXT
    assert not destination.is_symlink()
    assert destination.read_bytes().startswith(b'{"format":"kvsessions-jsonl"')


async def test_session_export_to_file_never_follows_a_symlink(tmp_path: Path) -> None:
    victim = _victim(tmp_path)
    destination = tmp_path / "session.md"
    destination.symlink_to(victim)
    _plant_links(tmp_path, "session.md", victim)
    manager = SessionManager(SessionStorage(MemoryStore(namespace="m")))
    session = await manager.create_session("gemini-2.5-flash")
    session.add_message("user", "hello")
    await manager.auto_save(session)

    assert await manager.export_to_file(session.session_id, destination, "markdown")

    assert victim.read_bytes() == VICTIM_TEXT
    assert not destination.is_symlink()
    assert "hello" in destination.read_text(encoding="utf-8")


def test_a_failed_atomic_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "file.txt"
    write_file_atomically(path, b"old")
    with pytest.raises(RuntimeError), AtomicFile(path) as file:
        file.stream.write(b"half of the new")
        raise RuntimeError("interrupted")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["file.txt"]


@pytest.mark.parametrize(("appended", "words"), [
    (b',"value":{"kind":"evil"}', "checksum mismatch"),  # a second value after the checksum
    (b',"key":"session:other"', "checksum mismatch"),    # a second key after the checksum
    (b',"crc32":1', "checksum mismatch"),                # a second checksum
    (b',"extra":1', "not an export entry"),              # any other field
])
async def test_fields_appended_after_the_checksum_are_refused(
    tmp_path: Path, appended: bytes, words: str
) -> None:
    source = MemoryStore(namespace="a")
    await populate(source, sample_documents(sessions=1, messages=2, files=0))
    path = tmp_path / "dump.jsonl"
    await export_to_json(source, path)
    lines = path.read_bytes().split(b"\n")
    at = 2  # the second entry: header is line 1
    assert lines[at].startswith(b'{"key":') and lines[at].endswith(b"}")
    lines[at] = lines[at][:-1] + appended + b"}"
    path.write_bytes(b"\n".join(lines))
    target = MemoryStore(namespace="t")

    with pytest.raises(ExportFileError) as caught:
        await import_from_json(target, path)

    assert caught.value.line == at + 1 and words in str(caught.value)
    assert await target.keys() == []


async def test_a_manifest_with_extra_fields_is_refused(tmp_path: Path) -> None:
    source = MemoryStore(namespace="a")
    await populate(source, sample_documents(sessions=1, messages=1, files=0))
    path = tmp_path / "dump.jsonl"
    await export_to_json(source, path)
    lines = path.read_bytes().rstrip(b"\n").split(b"\n")
    manifest = orjson.loads(lines[-1])
    lines[-1] = orjson.dumps({**manifest, "value": {"kind": "evil"}})
    path.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(ExportFileError, match="malformed manifest"):
        await import_from_json(MemoryStore(namespace="t"), path)


def test_a_missing_folder_is_reported_with_the_name_asked_for(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as caught:
        AtomicFile(tmp_path / "missing" / "dump.jsonl")
    assert caught.value.filename == str(tmp_path / "missing" / "dump.jsonl")
    assert ".partial" not in str(caught.value)
