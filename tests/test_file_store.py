"""What only the file store has to get right: names, folders, symlinks, temp files."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import subprocess
import sys
import threading
import time
import unicodedata
from pathlib import Path

import orjson
import pytest

from kvsessions.errors import ConfigError, KVSessionsError, StoreError
from kvsessions.kv.file import FileStore, key_to_parts
from kvsessions.kv.registry import open_store
from kvsessions.testing.contract import utf8_sorted

HOSTILE_KEYS = ["../../etc/passwd", "/abs", "a/../../b", "..", ".", "CON", "con", "NUL",
                "COM1.txt", "a\\..\\b", "~", ".lock", ".tmp-1-ab", "x.json", "x.d", "/", "//"]


def dumps(document: object) -> bytes:
    return orjson.dumps(document)


def all_paths(root: Path) -> list[Path]:
    return sorted(root.rglob("*"))


async def test_hostile_keys_stay_inside_and_roundtrip(tmp_path: Path) -> None:
    root = tmp_path / "root"
    async with FileStore(root, namespace="ns") as store:
        for index, key in enumerate(HOSTILE_KEYS):
            await store.put(key, dumps({"i": index}))
        for index, key in enumerate(HOSTILE_KEYS):
            assert orjson.loads(await store.get(key) or b"") == {"i": index}
        assert await store.keys() == utf8_sorted(HOSTILE_KEYS)
    # Nothing was created outside the namespace folder, and every name is plain hex.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["root"]
    assert [p.name for p in root.iterdir()] == ["ns"]
    names = {p.name for p in (root / "ns").iterdir()}
    assert names - {".lock", ".tmp", ".journal"} == {key.encode().hex() + ".json"
                                                     for key in HOSTILE_KEYS}


def test_names_are_injective_across_case_and_normalisation() -> None:
    nfc = unicodedata.normalize("NFC", "café")
    nfd = unicodedata.normalize("NFD", "café")
    assert nfc != nfd
    keys = ["con", "CON", "Con", nfc, nfd, "a", "A", "ß", "SS", "ss", "ﬁ", "fi"]
    paths = {(*key_to_parts(key)[0], key_to_parts(key)[1]) for key in keys}
    assert len(paths) == len(keys)
    for key in keys:
        _, name = key_to_parts(key)
        assert name == name.lower() and set(name[:-5]) <= set("0123456789abcdef")


async def test_case_and_normalisation_variants_are_distinct_keys(tmp_path: Path) -> None:
    keys = ["con", "CON", unicodedata.normalize("NFC", "é"), unicodedata.normalize("NFD", "é")]
    async with FileStore(tmp_path, namespace="ns") as store:
        for index, key in enumerate(keys):
            await store.put(key, dumps({"i": index}))
        for index, key in enumerate(keys):
            assert orjson.loads(await store.get(key) or b"") == {"i": index}
        assert len(await store.keys()) == 4


async def test_long_keys_near_512_bytes_keep_their_order(tmp_path: Path) -> None:
    base = "k" * 119  # 119 bytes: 238 hex characters, just under one path component
    keys = [
        base, base + "a", base + "ab", base + "a" * 200, base + "a" * 392, base + "a" * 393,
        base + "b", "k" * 512, "k" * 511 + "a", "é" * 256, "😀" * 128, "k" * 240, "k" * 241,
        "k", "l",
    ]
    assert max(len(k.encode()) for k in keys) == 512
    async with FileStore(tmp_path, namespace="ns") as store:
        store.scan_batch_size = 3
        await store.put_many([(key, dumps({"k": key})) for key in keys[:5]])
        for key in keys[5:]:
            await store.put(key, dumps({"k": key}))
        assert await store.keys() == utf8_sorted(keys)
        assert await store.keys(reverse=True) == utf8_sorted(keys, reverse=True)
        expected = [k for k in utf8_sorted(keys) if k.startswith(base + "a")]
        assert await store.keys(base + "a") == expected
        page = [k async for k, _ in store.scan(base, start_after=base + "a" * 200, limit=2)]
        assert page == [base + "a" * 392, base + "a" * 393]
        for key in keys:
            assert orjson.loads(await store.get(key) or b"") == {"k": key}
        assert await store.delete("k" * 512) is True
        assert await store.get("k" * 512) is None
    for path in all_paths(tmp_path):
        assert len(path.name) <= 245
        if path.is_dir() and path.name not in ("ns", ".tmp", ".journal"):
            assert path.name.endswith(".s")


async def test_planted_symlink_file_is_not_followed(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b'kvs1 -\n{"stolen": true}')
    async with FileStore(tmp_path / "root", namespace="ns") as store:
        _, name = key_to_parts("victim")
        (tmp_path / "root" / "ns" / name).symlink_to(secret)
        with pytest.raises(StoreError, match="symlink"):
            await store.get("victim")
        with pytest.raises(StoreError, match="symlink"):
            await store.get_many(["victim"])
        # A put replaces the link itself and never writes through it.
        await store.put("victim", dumps({"mine": True}))
        assert secret.read_bytes() == b'kvs1 -\n{"stolen": true}'
        assert not (tmp_path / "root" / "ns" / name).is_symlink()
        assert orjson.loads(await store.get("victim") or b"") == {"mine": True}


async def test_planted_symlink_folder_is_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    long_key = "x" * 200
    dirs, name = key_to_parts(long_key)
    (outside / name).write_bytes(b'kvs1 -\n{"stolen": true}')
    async with FileStore(tmp_path / "root", namespace="ns") as store:
        (tmp_path / "root" / "ns" / dirs[0]).symlink_to(outside, target_is_directory=True)
        with pytest.raises(StoreError, match="symlink"):
            await store.get(long_key)
        with pytest.raises(StoreError, match="symlink"):
            await store.put(long_key, dumps({}))
        with pytest.raises(StoreError, match="symlink"):
            await store.keys()
    assert [p.name for p in outside.iterdir()] == [name]

    (tmp_path / "root2").mkdir()
    (tmp_path / "root2" / "ns").symlink_to(outside, target_is_directory=True)
    with pytest.raises(StoreError, match="not a plain folder"):
        await FileStore(tmp_path / "root2", namespace="ns").open()


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


async def test_temp_files_of_dead_writers_are_removed_on_reopen(tmp_path: Path) -> None:
    long_key = "y" * 200
    async with FileStore(tmp_path, namespace="ns") as store:
        await store.put(long_key, dumps({}))
    folder = tmp_path / "ns"
    subfolder = folder / ".tmp"  # where writes are staged; earlier releases used the folder
    pid = dead_pid()
    dead = [folder / f".tmp-{pid}-00ff", subfolder / f".tmp-{pid}-ab12"]
    alive = [folder / f".tmp-{os.getpid()}-00ff", subfolder / f".tmp-{os.getpid()}-cd34"]
    for path in dead + alive:
        path.write_bytes(b"half a write")
    async with FileStore(tmp_path, namespace="ns") as store:
        assert await store.keys() == [long_key]
    assert not any(path.exists() for path in dead)
    assert all(path.exists() for path in alive)


async def test_a_failed_write_raises_and_leaves_nothing(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    async with FileStore(tmp_path, namespace="ns") as store:
        await store.put("k", dumps({"v": 1}))

        def broken_fsync(fd: int) -> None:
            raise OSError(5, "Input/output error")

        monkeypatch.setattr(os, "fsync", broken_fsync)
        for attempt in (store.put("k", dumps({"v": 2})), store.put_if_absent("new", dumps({})),
                        store.put_many([("k", dumps({"v": 3})), ("other", dumps({}))])):
            with pytest.raises(KVSessionsError, match="Input/output error"):
                await attempt
        monkeypatch.undo()
        assert orjson.loads(await store.get("k") or b"") == {"v": 1}
        assert await store.keys() == ["k"]
    assert sorted(p.name for p in (tmp_path / "ns").iterdir()) == [
        ".journal", ".lock", ".tmp", b"k".hex() + ".json"]
    assert list((tmp_path / "ns" / ".tmp").iterdir()) == []


async def test_expired_files_are_removed_when_met(tmp_path: Path) -> None:
    async with FileStore(tmp_path, namespace="ns") as store:
        await store.put("gone", dumps({}), ttl=0.2)
        await store.put("kept", dumps({}))
        path = tmp_path / "ns" / key_to_parts("gone")[1]
        assert path.exists()
        await asyncio.sleep(0.3)
        assert await store.get("gone") is None
        assert not path.exists()
        await store.put("gone2", dumps({}), ttl=0.2)
        await asyncio.sleep(0.3)
        assert await store.keys() == ["kept"]
        assert not (tmp_path / "ns" / key_to_parts("gone2")[1]).exists()


def _race(root: str, key: str, start: float, queue: multiprocessing.Queue[object]) -> None:
    async def attempt() -> bool:
        async with FileStore(root, namespace="ns") as store:
            return await store.put_if_absent(key, dumps({"pid": os.getpid()}))

    time.sleep(max(0.0, start - time.time()))
    try:
        queue.put(asyncio.run(attempt()))
    except Exception as exc:  # reported to the parent, which fails the test
        queue.put(repr(exc))


@pytest.mark.parametrize("existing", ["none", "expired"])
async def test_put_if_absent_has_one_winner_across_processes(tmp_path: Path,
                                                             existing: str) -> None:
    if existing == "expired":
        async with FileStore(tmp_path, namespace="ns") as store:
            await store.put("race", dumps({"old": True}), ttl=0.05)
        await asyncio.sleep(0.1)
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    start = time.time() + 0.5
    processes = [context.Process(target=_race, args=(str(tmp_path), "race", start, queue))
                 for _ in range(6)]
    for process in processes:
        process.start()
    results = [queue.get(timeout=30) for _ in processes]
    for process in processes:
        process.join(timeout=30)
    assert results.count(True) == 1, results
    assert results.count(False) == 5, results
    async with FileStore(tmp_path, namespace="ns") as store:
        assert "pid" in orjson.loads(await store.get("race") or b"")


def test_url_options(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path}/data?namespace=app&fsync=false")
    assert isinstance(store, FileStore)
    assert store.folder == tmp_path / "data" / "app"
    assert store.fsync is False
    assert "FileStore" in repr(store)
    for bad in ("file://host/x", f"file://{tmp_path}?colour=red",
                f"file://{tmp_path}?namespace=../x"):
        with pytest.raises(ConfigError):
            open_store(bad)


async def test_concurrent_scans_each_see_every_key(tmp_path: Path) -> None:
    """Scans list the folder on worker threads at once: each reads the names through its own
    descriptor (a shared one shares the read position, and each scan then missed keys)."""
    async with FileStore(tmp_path / "root", namespace="ns") as store:
        keys = [f"k{i:05d}" for i in range(3000)]
        await store.put_many([(key, b"{}") for key in keys])
        for _ in range(3):
            found = await asyncio.gather(*(store.keys() for _ in range(6)))
            assert all(scanned == keys for scanned in found)


async def test_a_get_during_a_batch_waits_for_its_last_rename(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch stopped after its first file's rename: a ``get`` of that file does not return
    the new value until the batch is whole (the batch counter is odd meanwhile)."""
    keys = [f"message:s:{i}" for i in range(3)]
    async with FileStore(tmp_path, namespace="ns") as store:
        await store.put_many([(key, dumps({"n": 1})) for key in keys])
        paused, resume = threading.Event(), threading.Event()
        real_replace = os.replace
        renames = 0

        def replace(*args: object, **kwargs: object) -> None:
            nonlocal renames
            real_replace(*args, **kwargs)  # type: ignore[arg-type]
            renames += 1
            if renames == 2:  # the journal, then the first file
                paused.set()
                resume.wait()

        monkeypatch.setattr(os, "replace", replace)
        writing = asyncio.ensure_future(store.put_many([(key, dumps({"n": 2})) for key in keys]))
        try:
            await asyncio.to_thread(paused.wait)
            reading = asyncio.ensure_future(store.get(keys[0]))
            for _ in range(50):
                await asyncio.sleep(0)
            assert not reading.done(), "a get saw part of a batch"
        finally:
            resume.set()
            await writing
        assert orjson.loads(await reading or b"") == {"n": 2}
        assert [orjson.loads(v or b"") for v in await store.get_many(keys)] == [{"n": 2}] * 3
