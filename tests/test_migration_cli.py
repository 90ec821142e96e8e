"""The migration commands of ``kvsessions`` and scripts/migrate.py, run as a user runs them."""

from __future__ import annotations

import asyncio
import io
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from kvsessions.cli.main import main
from kvsessions.cli.progress import ProgressDisplay
from kvsessions.kv.registry import open_store
from kvsessions.migration import MigrationProgress
from tests.test_migration import sample_documents

ROOT = Path(__file__).resolve().parent.parent
SECRET = "hunter2-secret"


def sqlite_url(path: Path, namespace: str = "kv") -> str:
    return f"sqlite:///{path}?namespace={namespace}"


def fill(url: str, documents: dict[str, bytes]) -> None:
    async def run() -> None:
        async with open_store(url) as store:
            await store.put_many(list(documents.items()))
    asyncio.run(run())


def change(url: str, puts: dict[str, bytes], deletes: list[str]) -> None:
    async def run() -> None:
        async with open_store(url) as store:
            if puts:
                await store.put_many(list(puts.items()))
            await store.delete_many(deletes)
    asyncio.run(run())


def keys_of(url: str) -> list[str]:
    async def run() -> list[str]:
        async with open_store(url) as store:
            return await store.keys()
    return asyncio.run(run())


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def error_lines(err: str) -> list[str]:
    # Log records of the store layer (logging.basicConfig in cli.py) are not the command's own
    # output; the command's error is the one line that follows them.
    return [line for line in err.splitlines() if line and not line.startswith("WARNING ")]


@pytest.fixture
def source_url(tmp_path: Path) -> str:
    url = sqlite_url(tmp_path / "source.db")
    fill(url, sample_documents())
    return url


def test_a_dry_run_creates_no_destination(capsys: Any, tmp_path: Path,
                                          source_url: str) -> None:
    destination = tmp_path / "not-yet.db"
    folder = tmp_path / "not-yet-folder"
    for url in (sqlite_url(destination), f"file://{folder}"):
        code, out, err = run_cli(capsys, "migrate", source_url, url, "--dry-run")
        assert code == 0, err
        assert "would copy 38 documents" in out
        assert "does not exist yet; compared with an empty store, nothing created" in err
    assert not destination.exists() and not folder.exists()


def test_migrate_verify_and_resume_flags(capsys: Any, tmp_path: Path, source_url: str) -> None:
    destination = sqlite_url(tmp_path / "destination.db")

    code, out, _ = run_cli(capsys, "migrate", source_url, destination, "--dry-run")
    assert code == 0 and "would copy 38 documents" in out
    assert keys_of(destination) == []

    code, out, err = run_cli(capsys, "migrate", source_url, destination, "--batch-size", "5",
                             "--progress-interval", "0")
    assert code == 0, err
    assert "copied 38 documents (3 sessions, 24 messages, 2 files)" in out
    assert "verify: equal (38 documents on each side)" in out
    assert "invalid documents: 9" in out  # the hard values have no kind
    progress = [line for line in err.splitlines() if line.startswith("migrate: ")]
    assert progress and progress[-1].startswith("migrate: 38 documents")

    code, out, _ = run_cli(capsys, "verify", source_url, destination)
    assert code == 0 and "equal" in out

    victim = sorted(keys_of(source_url))[5]
    change(destination, {"zzz:extra": b"{}"}, [victim])
    code, out, _ = run_cli(capsys, "verify", source_url, destination, "--json")
    result = orjson.loads(out)
    assert code == 1
    assert (result["missing"], result["extra"]) == ([victim], ["zzz:extra"])
    code, out, _ = run_cli(capsys, "verify", source_url, destination)
    assert code == 1 and "NOT equal" in out and victim in out

    code, out, _ = run_cli(capsys, "migrate", source_url, destination, "--no-resume",
                           "--no-verify", "--no-validate", "--json", "--merge")
    result = orjson.loads(out)
    assert code == 0 and result["verified"] is None and result["documents_copied"] == 38
    assert result["invalid_documents"] == 0 and result["validated"] is False


def test_export_import_backup_validate_upgrade(capsys: Any, tmp_path: Path,
                                               source_url: str) -> None:
    for name in ("dump.jsonl.gz", "dump.json"):
        target = sqlite_url(tmp_path / f"{name}.db")
        code, out, _ = run_cli(capsys, "export", source_url, str(tmp_path / name), "-q")
        assert code == 0 and "exported 38 documents" in out
        code, out, _ = run_cli(capsys, "import", target, str(tmp_path / name), "-q")
        assert code == 0 and "imported 38 documents" in out
        assert run_cli(capsys, "verify", source_url, target)[0] == 0

    code, out, _ = run_cli(capsys, "backup", source_url, str(tmp_path / "backups"), "--json")
    result = orjson.loads(out)
    assert code == 0 and Path(result["path"]).exists() and result["documents_exported"] == 38

    code, out, _ = run_cli(capsys, "validate", source_url)
    assert code == 1 and "9 invalid" in out
    code, out, _ = run_cli(capsys, "validate", source_url, "--prefix", "message:")
    assert code == 0 and "checked 24 documents: 0 invalid" in out
    code, out, _ = run_cli(capsys, "upgrade", source_url, "--json")
    result = orjson.loads(out)
    assert code == 0 and result["documents_checked"] == 38 and result["documents_upgraded"] == 0


def test_a_corrupt_import_file_is_one_error_line_naming_the_line(
    capsys: Any, tmp_path: Path, source_url: str
) -> None:
    path = tmp_path / "dump.jsonl"
    assert run_cli(capsys, "export", source_url, str(path), "-q")[0] == 0
    lines = path.read_bytes().split(b"\n")
    lines[4], lines[5] = lines[5], lines[4]
    path.write_bytes(b"\n".join(lines))
    target = sqlite_url(tmp_path / "target.db")
    code, _, err = run_cli(capsys, "import", target, str(path))
    assert code == 2
    assert error_lines(err) == [line for line in err.splitlines() if "error" in line]
    (line,) = error_lines(err)
    assert line.startswith("kvsessions import: error:") and "line 6" in line
    assert keys_of(target) == []


@pytest.mark.parametrize("bad_url", [
    "not a url",
    f"nosuchscheme://user:{SECRET}@127.0.0.1/x",
    f"postgresql://user:{SECRET}@127.0.0.1:1/test",
    f"redis://:{SECRET}@127.0.0.1:1/0",
    f"mongodb://user:{SECRET}@127.0.0.1:1/db?serverSelectionTimeoutMS=500",
], ids=["not_a_url", "unknown_scheme", "postgresql_refused", "redis_refused", "mongodb_refused"])
def test_bad_or_unreachable_stores_are_one_line_without_the_password(
    capsys: Any, tmp_path: Path, bad_url: str
) -> None:
    code, out, err = run_cli(capsys, "migrate", sqlite_url(tmp_path / "s.db"), bad_url,
                             "--connect-timeout", "5")
    assert code == 2 and out == ""
    (line,) = error_lines(err)
    assert line.startswith("kvsessions migrate: error:")
    assert SECRET not in err


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    for connection in accepted:
        connection.close()
    listener.close()


def test_a_server_that_never_answers_gives_up_after_the_connect_timeout(
    capsys: Any, silent_server: int
) -> None:
    code, _, err = run_cli(capsys, "verify", f"redis://:{SECRET}@127.0.0.1:{silent_server}/0",
                           "memory://", "--connect-timeout", "0.5")
    assert code == 2
    (line,) = error_lines(err)
    assert "did not answer within 0.5 s" in line and SECRET not in err


def test_the_same_url_twice_is_refused(capsys: Any, tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "s.db")
    code, _, err = run_cli(capsys, "migrate", url, url)
    assert code == 2 and "same" in err


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_on_a_terminal_and_lines_elsewhere() -> None:
    terminal = _Terminal()
    bar = ProgressDisplay("migrate", stream=terminal, interval=0)
    bar.total = 1000
    bar(MigrationProgress(250, 0, "k250", 0.5))
    bar(MigrationProgress(500, 0, "k500", 1.0))
    bar.finish()
    text = terminal.getvalue()
    assert "\r" in text and "[" in text and "500/1,000 docs" in text
    assert "500 docs/s" in text and "ETA 0:01" in text and text.endswith("\n")

    plain = io.StringIO()
    lines = ProgressDisplay("export", stream=plain, interval=0)
    lines(MigrationProgress(100, 0, "k", 2.0))
    lines.finish()  # what was shown last is not shown again
    assert plain.getvalue().splitlines() == ["export: 100 documents, 50 docs/s"]
    assert "\r" not in plain.getvalue()

    closing = io.StringIO()  # no interval asked for: the closing line only
    lines = ProgressDisplay("export", stream=closing)
    lines(MigrationProgress(100, 0, "k", 2.0))
    lines(MigrationProgress(300, 0, "k", 3.0))
    lines.finish()
    assert closing.getvalue().splitlines() == ["export: 300 documents, 100 docs/s"]


def test_scripts_migrate_py_is_the_same_command(tmp_path: Path, source_url: str) -> None:
    destination = sqlite_url(tmp_path / "destination.db")
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "migrate.py"), source_url, destination, "-q"],
        capture_output=True, text=True, env=environment, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "copied 38 documents" in done.stdout and "verify: equal" in done.stdout
    again = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "migrate.py"), "verify", source_url,
         destination], capture_output=True, text=True, env=environment, timeout=120,
        check=False)
    assert again.returncode == 0, again.stderr
