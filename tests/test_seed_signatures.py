"""Every function and method of seed 003's API reference (shared/seeds/003_*.txt, "API
Reference", copied below as printed) accepts the seed's calls: its parameters, in its order,
positionally and by name. Then each is called in the seed's positional form on real stores
(``migrate_storage(src, dst, True, callback)`` raised TypeError once)."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path
from typing import Any

import orjson
import pytest

import kvsessions
from kvsessions import (
    ChatSession,
    SessionManager,
    SessionStorage,
    UploadedFileRecord,
    backup_storage,
    export_to_json,
    import_from_json,
    migrate_storage,
    verify_migration,
)
from kvsessions.kv.memory import MemoryStore
from kvsessions.migration import MigrationProgress

#: The seed's signatures, section by section, as printed in its API reference.
SEED_API = {
    SessionStorage: '''
async def initialize() -> None
async def save_session(session: ChatSession) -> bool
async def load_session(session_id: str) -> Optional[ChatSession]
async def list_sessions(
    status: Optional[str] = None,
    limit: int = 100
) -> list[ChatSession]
async def delete_session(session_id: str) -> bool
async def save_file_record(file_record: UploadedFileRecord) -> bool
async def load_file_record(file_id: str) -> Optional[UploadedFileRecord]
async def list_file_records(limit: int = 100) -> list[UploadedFileRecord]
async def delete_expired_files() -> int
async def close() -> None
''',
    SessionManager: '''
async def startup() -> dict[str, Any]
async def auto_save(session: ChatSession) -> bool
async def get_session(session_id: str) -> Optional[ChatSession]
async def create_session(model: str) -> ChatSession
async def archive_session(session_id: str) -> bool
async def cleanup_expired_sessions() -> int
async def export_session(
    session_id: str,
    format: Literal["json", "text", "markdown"] = "json"
) -> Optional[str]
async def export_to_file(
    session_id: str,
    output_path: Path,
    format: Literal["json", "text", "markdown"] = "json"
) -> bool
async def get_statistics() -> dict[str, Any]
async def shutdown() -> None
''',
    kvsessions: '''
async def migrate_storage(
    source: SessionStorage,
    destination: SessionStorage,
    verify: bool = True,
    progress_callback: Optional[callable] = None
) -> dict[str, Any]
async def verify_migration(
    source: SessionStorage,
    destination: SessionStorage
) -> dict[str, Any]
async def export_to_json(
    storage: SessionStorage,
    output_path: Path | str
) -> dict[str, Any]
async def import_from_json(
    storage: SessionStorage,
    input_path: Path | str
) -> dict[str, Any]
async def backup_storage(
    storage: SessionStorage,
    backup_dir: Path | str
) -> dict[str, Any]
''',
}

#: Constructors and class methods as the seed's examples call them (positional where it does).
SEED_CALLS = [
    ("SQLiteSessionStorage", ["path"], []),
    ("PostgreSQLSessionStorage", ["dsn"], ["min_pool_size", "max_pool_size"]),
    ("MongoDBSessionStorage", ["uri"], ["database_name"]),
    ("SessionManager", ["storage"], ["auto_save_enabled", "expiry_hours"]),
    ("StorageConfig", [], ["backend", "connection_string", "min_pool_size", "max_pool_size",
                           "auto_save", "expiry_hours"]),
    ("create_storage", ["config"], []),
]


def seed_functions() -> list[tuple[Any, str, list[str]]]:
    """(owner, name, the seed's parameter names in order) for every seed signature."""
    found = []
    for owner, text in SEED_API.items():
        source = text.replace(") -> ", ") -> ").replace("\nasync def", "\n\nasync def")
        for chunk in source.strip().split("\n\n"):
            tree = ast.parse(chunk.strip() + ": ...")
            function = tree.body[0]
            assert isinstance(function, ast.AsyncFunctionDef)
            found.append((owner, function.name, [a.arg for a in function.args.args]))
    return found


def our_parameters(owner: Any, name: str) -> list[inspect.Parameter]:
    function = getattr(owner, name)
    parameters = list(inspect.signature(function).parameters.values())
    return parameters[1:] if inspect.isclass(owner) else parameters  # without self


@pytest.mark.parametrize(("owner", "name", "seed"), seed_functions(),
                         ids=[f"{getattr(o, '__name__', o)}.{n}" for o, n, _ in seed_functions()])
def test_seed_parameters_bind_positionally_in_the_seed_order(
    owner: Any, name: str, seed: list[str]
) -> None:
    ours = our_parameters(owner, name)
    positional = [p.name for p in ours if p.kind in (inspect.Parameter.POSITIONAL_ONLY,
                                                   inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    assert positional[:len(seed)] == seed, (name, positional)
    assert inspect.iscoroutinefunction(getattr(owner, name))
    # Whatever is beyond the seed's parameters has a default: the seed's calls are complete.
    assert all(p.default is not inspect.Parameter.empty for p in ours[len(seed):]
               if p.kind is not inspect.Parameter.VAR_KEYWORD), name


@pytest.mark.parametrize(("name", "positional", "keywords"), SEED_CALLS)
def test_seed_constructors_take_the_seed_arguments(
    name: str, positional: list[str], keywords: list[str]
) -> None:
    parameters = inspect.signature(getattr(kvsessions, name)).parameters
    order = [p for p, v in parameters.items() if v.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    assert order[:len(positional)] == positional
    for keyword in keywords:
        assert keyword in parameters and parameters[keyword].kind in (
            inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY), keyword


async def filled() -> MemoryStore:
    store = MemoryStore(namespace="seed_src")
    session = ChatSession.create("gemini-2.5-flash")
    session.add_message("user", "Hello!")
    session.add_message("assistant", "Hi there!")
    await SessionStorage(store).save_session(session)
    return store


async def test_migration_tools_in_the_seed_positional_form(tmp_path: Path) -> None:
    source = await filled()
    destination = MemoryStore(namespace="seed_dst")
    seen: list[MigrationProgress] = []

    result = await migrate_storage(source, destination, True, seen.append)

    assert result["verified"] is True and result["sessions_migrated"] == 1
    assert seen and seen[-1].documents == result["documents_copied"]
    unverified = await migrate_storage(source, MemoryStore(namespace="x"), False, None)
    assert unverified["verified"] is None
    assert (await verify_migration(source, destination))["ok"] is True
    exported = await export_to_json(source, tmp_path / "backup.json")
    assert exported["documents_exported"] == result["documents_copied"]
    restored = MemoryStore(namespace="seed_restored")
    imported = await import_from_json(restored, str(tmp_path / "backup.json"))
    assert imported["documents_imported"] == exported["documents_exported"]
    backup = await backup_storage(source, tmp_path / "backups")
    assert Path(backup["path"]).parent == tmp_path / "backups"


async def test_storage_and_manager_in_the_seed_positional_form(tmp_path: Path) -> None:
    storage = SessionStorage(MemoryStore(namespace="seed_api"))
    await storage.initialize()
    session = ChatSession.create("gemini-2.5-flash")
    session.add_message("user", "Hello!")
    assert await storage.save_session(session) is True
    assert (await storage.load_session(session.session_id)) is not None
    assert [s.session_id for s in await storage.list_sessions("active", 10)] == [
        session.session_id]
    record = UploadedFileRecord.create("files/1", "https://example.invalid/1", "a.pdf", 10,
                                       "application/pdf")
    assert await storage.save_file_record(record) is True
    assert (await storage.load_file_record(record.file_id)) is not None
    assert len(await storage.list_file_records(5)) == 1
    assert await storage.delete_expired_files() == 0

    manager = SessionManager(storage, True, 72)
    await manager.startup()
    created = await manager.create_session("gemini-2.5-flash")
    created.add_message("user", "Hello!")
    assert await manager.auto_save(created) is True
    assert await manager.get_session(created.session_id) is not None
    text = await manager.export_session(created.session_id, "markdown")
    assert text is not None and "Hello!" in text
    out = tmp_path / "export.json"
    assert await manager.export_to_file(created.session_id, out, "json") is True
    assert orjson.loads(out.read_bytes())["session_id"] == created.session_id
    assert await manager.archive_session(created.session_id) is True
    assert isinstance(await manager.cleanup_expired_sessions(), int)
    assert (await manager.get_statistics())["total_sessions"] >= 1
    await manager.shutdown()
    assert await storage.delete_session(session.session_id) is True
    await storage.close()
