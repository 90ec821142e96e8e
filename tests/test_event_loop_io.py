"""No blocking file I/O on the event loop (issue 10, item 4): export, import, backup, a failed
export's clean-up, ``SessionManager.export_to_file`` and the CLI's reading of a config file all
touch files from worker threads only.

How it is seen: an audit hook (``open``, renames, removals, mkdir, mkstemp) and a wrapper around
``os.stat`` record every file operation under the test's folder made on the thread running the
event loop. Nothing depends on timing.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kvsessions.cli.main import main
from kvsessions.errors import StoreError
from kvsessions.kv.base import KeyRange
from kvsessions.kv.memory import MemoryStore
from kvsessions.migration import backup_storage, export_to_json, import_from_json
from kvsessions.sessions.manager import SessionManager
from kvsessions.sessions.storage import SessionStorage
from tests.test_migration import populate, sample_documents

_FILE_EVENTS = {"open", "os.rename", "os.remove", "os.mkdir", "os.rmdir", "os.listdir",
                "os.scandir", "os.chmod", "tempfile.mkstemp", "os.truncate"}


class _LoopFileIO:
    """File operations under ``folder`` made on the thread ``thread_id`` (while watching)."""

    def __init__(self) -> None:
        self.folder: str | None = None
        self.thread_id: int | None = None
        self.seen: list[str] = []

    def note(self, event: str, path: object) -> None:
        if self.folder is None or threading.get_ident() != self.thread_id:
            return
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if isinstance(path, str | os.PathLike) and os.fspath(path).startswith(self.folder):
            self.seen.append(f"{event} {os.fspath(path)}")


_WATCH = _LoopFileIO()


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event in _FILE_EVENTS and args:
        _WATCH.note(event, args[0])


sys.addaudithook(_audit)  # hooks cannot be removed: it records only while a test watches


@pytest.fixture
def loop_file_io(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[_LoopFileIO]:
    """Watch the current thread (where pytest-asyncio and ``main`` run the event loop)."""
    real_stat = os.stat

    def stat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        _WATCH.note("os.stat", path)
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", stat)
    _WATCH.folder, _WATCH.thread_id, _WATCH.seen = str(tmp_path), threading.get_ident(), []
    try:
        yield _WATCH
    finally:
        _WATCH.folder = _WATCH.thread_id = None


async def test_export_import_and_backup_touch_files_off_the_loop(
    tmp_path: Path, loop_file_io: _LoopFileIO
) -> None:
    source, target = MemoryStore(namespace="a"), MemoryStore(namespace="b")
    await populate(source, sample_documents(sessions=2, messages=3, files=1))
    for name in ("dump.jsonl", "dump.jsonl.gz", "dump.json"):
        await export_to_json(source, tmp_path / name, batch_size=2)
        await import_from_json(target, tmp_path / name, batch_size=2)
    await backup_storage(source, tmp_path / "backups" / "nested")
    await backup_storage(source, tmp_path / "backups" / "nested")
    assert loop_file_io.seen == []


class _FailingScan(MemoryStore):
    """A store whose scan fails after its first page (a server gone mid-export)."""

    async def _scan_page(self, key_range: KeyRange, reverse: bool,
                         limit: int) -> tuple[list[tuple[str, bytes]], str | None]:
        if key_range.lower:
            raise StoreError("the server went away")
        return await super()._scan_page(key_range, reverse, limit)


async def test_a_failed_export_cleans_up_off_the_loop(
    tmp_path: Path, loop_file_io: _LoopFileIO
) -> None:
    source = _FailingScan(namespace="a")
    source.scan_batch_size = 2
    await populate(source, sample_documents(sessions=2, messages=3, files=1))
    with pytest.raises(StoreError):
        await export_to_json(source, tmp_path / "dump.jsonl.gz", batch_size=2)
    assert loop_file_io.seen == []
    assert list(tmp_path.iterdir()) == []  # and no partial file is left


async def test_session_export_to_file_writes_off_the_loop(
    tmp_path: Path, loop_file_io: _LoopFileIO
) -> None:
    manager = SessionManager(SessionStorage(MemoryStore(namespace="m")))
    session = await manager.create_session("gemini-2.5-flash")
    session.add_message("user", "hello")
    await manager.auto_save(session)
    assert await manager.export_to_file(session.session_id, tmp_path / "new" / "s.md",
                                        "markdown")
    assert loop_file_io.seen == []
    assert "hello" in (tmp_path / "new" / "s.md").read_text(encoding="utf-8")


def test_the_cli_reads_its_config_file_off_the_loop(
    tmp_path: Path, loop_file_io: _LoopFileIO, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.startswith("STORAGE_"):
            monkeypatch.delenv(name)
    config = tmp_path / "c.toml"
    config.write_text('[storage]\nurl = "memory://"\n')
    loop_file_io.seen.clear()
    assert main(["demo", "--config", str(config)]) == 0
    assert "Demo data written to memory://" in capsys.readouterr().out
    assert loop_file_io.seen == []
