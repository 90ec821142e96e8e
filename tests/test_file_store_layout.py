"""The file store's folder-per-piece layout: a scan reads the names in its range only, a folder
written by the release before this layout opens with every document in place (moved on open,
resumably), and the names on disk stay one-to-one and short."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from kvsessions import SessionStorage
from kvsessions.kv import file_layout
from kvsessions.kv.file import FileStore
from kvsessions.kv.file_layout import FILE_SUFFIX, PIECE_SUFFIX, key_to_parts, pieces
from kvsessions.testing.contract import utf8_sorted

LEGACY = Path(__file__).parent / "data" / "file_store_before_pieces"


def legacy_copy(tmp_path: Path) -> Path:
    root = tmp_path / "legacy"
    shutil.copytree(LEGACY, root)
    return root


def manifest() -> dict[str, object]:
    result: dict[str, object] = orjson.loads((LEGACY / "manifest.json").read_bytes())
    return result


def names_under(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*"))


async def test_a_folder_of_the_previous_release_opens_with_every_document(
    tmp_path: Path
) -> None:
    root = legacy_copy(tmp_path)
    expected = manifest()
    assert any(name.endswith(".d") for name in names_under(root / "chat"))  # long keys
    async with FileStore(root, namespace="chat") as store:
        found = {key: orjson.loads(value) async for key, value in store.scan()}
        assert found == expected
        assert await store.keys() == utf8_sorted(expected)
        storage = SessionStorage(store)
        sessions = await storage.list_sessions()
        assert len(sessions) == 3
        for session in sessions:
            loaded = await storage.load_session(session.session_id)
            assert loaded is not None and len(loaded.messages) == 4
            assert loaded.messages[0].content.endswith("é😀")
        assert len(await storage.list_file_records()) == 1
    # Nothing of the previous layout is left: only current names (and the expired key,
    # moved with the rest, stays invisible).
    left = names_under(root / "chat")
    assert not [n for n in left if n.endswith(".d")]
    assert all(n in (".lock", ".tmp", ".journal") or n.endswith((FILE_SUFFIX, PIECE_SUFFIX))
               for n in left)
    for key in expected:
        dirs, name = key_to_parts(key)
        assert (root / "chat").joinpath(*dirs, name).is_file(), key
    async with FileStore(root, namespace="chat") as store:  # opening again changes nothing
        assert {key: orjson.loads(value) async for key, value in store.scan()} == expected
        assert await store.get("cache:expired") is None
    assert names_under(root / "chat") == left


def test_a_move_killed_halfway_is_finished_by_the_next_open(tmp_path: Path) -> None:
    """kill -9 during the move (the child moves files one by one, slowly): every document is
    at its old place or its new one, and the next open finishes the move."""
    root = legacy_copy(tmp_path)
    child = (
        "import asyncio, os, sys, time\n"
        "import kvsessions.kv.file as f\n"
        "real = os.replace\n"
        "def slow(*a, **k):\n"
        "    real(*a, **k); print('moved', flush=True); time.sleep(0.05)\n"
        "f.os.replace = slow\n"
        "async def main():\n"
        "    async with f.FileStore(sys.argv[1], namespace='chat'):\n"
        "        pass\n"
        "asyncio.run(main())\n")
    process = subprocess.Popen([sys.executable, "-c", child, str(root)], stdout=subprocess.PIPE,
                               text=True, env={**os.environ, "PYTHONPATH": str(Path.cwd())})
    assert process.stdout is not None
    for _ in range(5):
        assert process.stdout.readline() == "moved\n"
    process.kill()
    process.wait()
    assert any(n.endswith(".json") and len(n) > 100 for n in os.listdir(root / "chat"))

    async def check() -> None:
        async with FileStore(root, namespace="chat") as store:
            assert {k: orjson.loads(v) async for k, v in store.scan()} == manifest()

    asyncio.run(check())


async def test_a_session_scan_lists_only_that_sessions_folder(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    listed: list[int] = []
    real = file_layout.list_names

    def counting(dir_fd: int) -> list[tuple[str, bool, bool]]:
        names = real(dir_fd)
        listed.append(len(names))
        return names

    async with FileStore(tmp_path, namespace="ns") as store:
        await store.put_many([(f"message:s{s:03d}:m{m:03d}", b"{}")
                              for s in range(200) for m in range(10)])
        await store.put_many([(f"session:s{s:03d}", b"{}") for s in range(200)])
        monkeypatch.setattr(file_layout, "list_names", counting)
        latest = [k async for k, _ in store.scan("message:s100:", reverse=True, limit=3)]
        assert latest == ["message:s100:m009", "message:s100:m008", "message:s100:m007"]
        assert listed == [10]  # one folder, ten names
        listed.clear()
        page = [k async for k, _ in store.scan("message:s100:", start_after="message:s100:m004")]
        assert len(page) == 5 and listed == [10]
        listed.clear()
        assert len(await store.keys("message:s1")) == 1000  # a partial piece: its parent


async def test_a_delete_removes_the_folders_it_empties(tmp_path: Path) -> None:
    """Folders of deleted sessions do not pile up: a scan of everything would list them."""
    folder = tmp_path / "ns"

    def piece(*keys: str) -> Path:
        dirs, _ = key_to_parts(keys[0])
        return folder.joinpath(*dirs)

    async with FileStore(tmp_path, namespace="ns") as store:
        await store.put_many([(f"message:s{s}:m{m}", b"{}") for s in (1, 2) for m in range(3)])
        await store.put("session:s1", b"{}")
        await store.delete_many([f"message:s1:m{m}" for m in range(2)])
        assert piece("message:s1:x").is_dir()  # m2 is left
        assert await store.delete("message:s1:m2")
        assert not piece("message:s1:x").exists()
        assert piece("message:s2:x").is_dir()  # the parent holds s2: kept
        assert await store.delete_many([f"message:s2:m{m}" for m in range(3)]) == 3
        assert not (folder / key_to_parts("message:x")[0][0]).exists()
        assert await store.compare_and_set("session:s1", b"{}", None)
        assert not (folder / key_to_parts("session:x")[0][0]).exists()
        assert await store.keys() == []
        # Writing into a removed folder makes it again.
        await store.put("message:s1:m9", b"{}")
        assert await store.get("message:s1:m9") == b"{}"
        assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == [
            key_to_parts("message:x")[0][0]]


#: Rounds of each racing process, and its time limit in seconds (the loop ends at either).
_RACE_ROUNDS, _RACE_SECONDS = 1500, 4.0


def race_in_one_folder(root: str, who: str, start: float, report: Any) -> None:
    """A process of the race below: writes, reads back and deletes keys of its own in a
    folder the other process empties and fills too, by every writing call in turn."""

    async def run() -> list[str]:
        problems: list[str] = []
        async with FileStore(root, namespace="race") as store:
            while time.time() < start:
                await asyncio.sleep(0.001)
            deadline = time.monotonic() + _RACE_SECONDS
            for round_ in range(_RACE_ROUNDS):
                if time.monotonic() > deadline:
                    break
                key, value = f"message:shared:{who}{round_}", f'{{"n":{round_}}}'.encode()
                try:
                    how = round_ % 4
                    if how == 0:
                        await store.put(key, value)
                    elif how == 1:
                        assert await store.put_if_absent(key, value)
                    elif how == 2:
                        await store.put_many([(key, value), (key + "b", value)])
                    else:
                        assert await store.compare_and_set(key, None, value)
                    if await store.get(key) != value:
                        problems.append(f"{key}: not read back")
                    await store.delete_many([key, key + "b"])
                except Exception as exc:
                    problems.append(f"{key}: {type(exc).__name__}: {exc}")
                if len(problems) > 5:
                    break
        return problems

    report.put((who, asyncio.run(run())))


def test_writers_and_deleters_emptying_one_folder_lose_nothing(tmp_path: Path) -> None:
    """Two processes write and delete keys of one folder, which each delete may empty and
    remove while the other is about to write into it: every write lands and reads back."""
    context = multiprocessing.get_context("spawn")
    report = context.Queue()
    start = time.time() + 3.0  # both past their start-up
    processes = [context.Process(target=race_in_one_folder,
                                 args=(str(tmp_path), who, start, report)) for who in "ab"]
    for process in processes:
        process.start()
    try:
        results = dict(report.get(timeout=60) for _ in processes)
    finally:
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
    assert results == {"a": [], "b": []}


def test_pieces_are_short_prefix_free_names_that_sort_like_keys() -> None:
    keys = ["a", "a:", "a:b", "a:b:", "ab", "a;", "message:s1:m1", "x" * 130, "x" * 120,
            "x" * 120 + ":", "é" * 70, "é" * 59 + "a" + "é", "😀" * 31 + ":q", ":", "::", "z"]
    for key in keys:
        cut = pieces(key)
        assert b"".join(cut) == key.encode()
        assert all(len(p) <= 120 for p in cut)
        dirs, name = key_to_parts(key)
        assert all(len(n) <= 242 for n in dirs) and len(name) <= 245
    assert len({(*key_to_parts(k)[0], key_to_parts(k)[1]) for k in keys}) == len(keys)


async def test_byte_cut_pieces_keep_key_order(tmp_path: Path) -> None:
    """Keys cut at 120 bytes inside a character, beside keys of other lengths there."""
    keys = ["é" * 59 + "a" + "é" * 10, "é" * 60 + "b", "é" * 59 + "a", "é" * 59 + "é",
            "x" * 119 + "é" + "z", "x" * 120 + "y", "x" * 120, "x" * 119, "😀" * 30 + "a" * 9,
            "😀" * 31, "😀" * 29 + "a" + "😀"]
    async with FileStore(tmp_path, namespace="ns") as store:
        await store.put_many([(key, b"{}") for key in keys])
        assert await store.keys() == utf8_sorted(keys)
        assert await store.keys(reverse=True) == utf8_sorted(keys, reverse=True)
        for prefix in ("é" * 59, "x" * 119, "😀" * 29, "x" * 120):
            assert await store.keys(prefix) == [k for k in utf8_sorted(keys)
                                                if k.startswith(prefix)]
