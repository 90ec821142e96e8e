"""``kvsessions export`` writes only to a new or a regular file, or ``-`` for standard output
(issue 15, item 4): whatever else is at the destination (a symlink, a named pipe, a device, a
folder) is left alone and refused with one line, before the store is even opened."""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from kvsessions.errors import ConfigError
from kvsessions.kv.memory import MemoryStore
from kvsessions.migration import export_to_json, import_from_json
from tests.cli import fill, one_error_line, run_kvsessions
from tests.test_migration import sample_documents

DOCUMENTS = sample_documents(sessions=1, messages=3, files=1)


def _symlink(path: Path) -> None:
    victim = path.with_name("victim.txt")
    victim.write_bytes(b"precious")
    path.symlink_to(victim)


def _dangling_symlink(path: Path) -> None:
    path.symlink_to(path.with_name("not-there.jsonl"))


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _folder(path: Path) -> None:
    path.mkdir()
    (path / "inside.txt").write_bytes(b"kept")


def _device(path: Path) -> None:
    try:  # a twin of /dev/full: the real one must not be put at risk by a test
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 7))
    except PermissionError:
        pytest.skip("creating a device node needs privileges this user lacks")


def _snapshot(path: Path) -> tuple[int, bytes | None, list[str]]:
    info = os.lstat(path)
    target = os.readlink(path).encode() if stat.S_ISLNK(info.st_mode) else None
    inside = sorted(p.name for p in path.iterdir()) if stat.S_ISDIR(info.st_mode) else []
    return stat.S_IFMT(info.st_mode), target, inside


@pytest.mark.parametrize(("make", "what"), [
    (_symlink, "a symbolic link"), (_dangling_symlink, "a symbolic link"),
    (_fifo, "a named pipe"), (_folder, "a folder"), (_device, "a device"),
])
def test_export_refuses_a_destination_that_is_not_a_regular_file(
    tmp_path: Path, make: Callable[[Path], None], what: str
) -> None:
    url = f"sqlite:///{tmp_path}/source.db"
    fill(url, DOCUMENTS)
    destination = tmp_path / "dump.jsonl"
    make(destination)
    before = _snapshot(destination)

    done = run_kvsessions("export", url, str(destination), timeout=60)

    line = one_error_line(done, "export")
    assert str(destination) in line and what in line
    assert _snapshot(destination) == before
    if before[1] is not None and destination.exists():
        assert destination.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")) == []


def test_export_to_a_dash_writes_the_export_to_standard_output(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/source.db"
    fill(url, DOCUMENTS)

    done = run_kvsessions("export", url, "-", cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "-").exists()
    assert f"exported {len(DOCUMENTS)} documents to standard output" in done.stderr
    piped = tmp_path / "piped.jsonl"
    piped.write_text(done.stdout)
    target = MemoryStore(namespace="t")
    result = asyncio.run(import_from_json(target, piped))
    assert result["documents_imported"] == len(DOCUMENTS)


async def test_the_library_refuses_too_and_still_writes_regular_files(tmp_path: Path) -> None:
    source = MemoryStore(namespace="a")
    await source.put_many(list(DOCUMENTS.items()))
    pipe = tmp_path / "pipe.jsonl"
    os.mkfifo(pipe)
    with pytest.raises(ConfigError, match="is a named pipe"):
        await export_to_json(source, pipe)
    regular = tmp_path / "old.jsonl"
    regular.write_bytes(b"an older export")
    result = await export_to_json(source, regular)
    assert result["documents_exported"] == len(DOCUMENTS)
    assert regular.read_bytes().startswith(b'{"format":"kvsessions-jsonl"')
