"""Something other than a regular file planted at a key's file name (a FIFO, a folder) is a
``StoreError`` naming the key from every operation, never a hang and never an outage.

Each operation runs in a child process bounded by a timeout: a hang on a FIFO happens inside
a blocking ``open`` on the event loop, where no ``asyncio.wait_for`` could ever fire."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kvsessions.kv.file import key_to_parts

KEY = "victim:key"
LONG_KEY = "L" * 200  # its file sits in a sub-folder

CHILD = """
import asyncio, json, sys
from kvsessions.errors import KVSessionsError
from kvsessions.kv.file import FileStore

async def main(root, operation, key):
    async with FileStore(root, namespace="ns") as store:
        value = b'{"a": 1}'
        calls = {
            "get": lambda: store.get(key),
            "get_many": lambda: store.get_many(["other", key]),
            "keys": lambda: store.keys(),
            "scan_reverse": lambda: store.keys(reverse=True),
            "delete": lambda: store.delete(key),
            "delete_many": lambda: store.delete_many(["other", key]),
            "put": lambda: store.put(key, value),
            "put_if_absent": lambda: store.put_if_absent(key, value),
            "put_many": lambda: store.put_many([("other", value), (key, value)]),
        }
        await store.put("other", b'{"b": 2}')
        try:
            await calls[operation]()
        except KVSessionsError as exc:
            return {"error": type(exc).__name__, "message": str(exc),
                    "other": (await store.get("other")).decode()}
        return {"error": None, "other": (await store.get("other")).decode()}

print(json.dumps(asyncio.run(main(*sys.argv[1:]))))
"""

OPERATIONS = ["get", "get_many", "keys", "scan_reverse", "delete", "delete_many", "put",
              "put_if_absent", "put_many"]


def plant(tmp_path: Path, kind: str, key: str) -> Path:
    dirs, name = key_to_parts(key)
    folder = tmp_path / "ns"
    for part in dirs:
        folder = folder / part
    folder.mkdir(parents=True)
    path = folder / name
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.mkdir()
        (path / "inside").write_text("not ours")
    return path


def run_child(tmp_path: Path, operation: str, key: str) -> dict[str, str | None]:
    try:
        done = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path), operation, key],
                              capture_output=True, text=True, timeout=60, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{operation} hung on the planted file")
    assert done.returncode == 0, done.stderr[-2000:]
    result: dict[str, str | None] = json.loads(done.stdout)
    return result


@pytest.mark.parametrize("key", [KEY, LONG_KEY], ids=["short", "long"])
@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_planted_non_file_is_a_store_error_naming_the_key(tmp_path: Path, kind: str,
                                                          operation: str, key: str) -> None:
    path = plant(tmp_path, kind, key)
    result = run_child(tmp_path, operation, key)
    if kind == "fifo" and operation in ("put", "put_many"):
        # A write replaces the planted FIFO by a rename, as it replaces a planted symlink.
        assert result["error"] is None
        assert path.is_file()
        return
    assert result["error"] == "StoreError", result
    assert repr(key) in (result["message"] or ""), result
    assert f"a {kind.replace('fifo', 'FIFO')}" in (result["message"] or ""), result
    # All or nothing: the other key of a batch is neither deleted nor written, and the
    # store stays usable.
    assert result["other"] == '{"b": 2}'
    assert path.exists()  # nothing that is not ours is removed
