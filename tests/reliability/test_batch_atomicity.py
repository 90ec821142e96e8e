"""``put_many`` is all or nothing within one partition, as docs/contract.md#partitions says,
against real processes: a reader process never sees part of a batch while a writer process
writes batch after batch, and a writer killed (SIGKILL at random moments; on the file store
also ``os._exit`` before each rename of a batch in turn) leaves each batch wholly written or
not at all, for a store opened before the kill and for one opened after it.

MongoDB runs against a SecantusDB started here as a single-node replica set: transactions need
one (a standalone server has none, and there a batch is atomic per document only).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from kvsessions.kv.base import KVStore
from kvsessions.kv.registry import open_store
from tests.backends.postgresql import POSTGRES_URL, drop_tables
from tests.backends.redis import REDIS_CLUSTER_URL, REDIS_URL, drop_namespaces
from tests.conftest import selected_backends
from tests.mongo_server import SecantusServer
from tests.reliability.batch_child import KEYS, batch_keys

ROOT = Path(__file__).resolve().parents[2]
CHILD = Path(__file__).with_name("batch_child.py")
ADAPTERS = ("file", "sqlite", "postgresql", "mongodb", "redis", "redis_cluster")
#: Reads the reader must have done, and batches it must have seen, for the race to count.
READS, SEEN = 150, 10
KILLS = 12


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "adapter" in metafunc.fixturenames:
        chosen = [name for name in selected_backends(metafunc.config) if name in ADAPTERS]
        metafunc.parametrize("adapter", chosen)


@pytest.fixture(scope="module")
def replica_set() -> Iterator[str]:
    """A SecantusDB that answers as a single-node replica set (its default)."""
    with SecantusServer(standalone=False) as server:
        yield server.url + "?directConnection=true"


@pytest.fixture
def url(adapter: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    namespace = "batch_" + uuid.uuid4().hex[:12]
    if adapter == "file":
        yield f"file://{tmp_path / 'files'}?namespace={namespace}"
    elif adapter == "sqlite":
        yield f"sqlite:///{tmp_path / 'batch.db'}?namespace={namespace}"
    elif adapter == "postgresql":
        yield f"{POSTGRES_URL}?namespace={namespace}"
        asyncio.run(drop_tables(POSTGRES_URL, {namespace}))
    elif adapter == "mongodb":
        base = request.getfixturevalue("replica_set")
        yield f"{base}&namespace={namespace}"
    else:
        server = REDIS_URL if adapter == "redis" else REDIS_CLUSTER_URL
        yield f"{server}?namespace={namespace}"
        asyncio.run(drop_namespaces(server, {namespace}))


def _child(*args: str, stdin: Any = subprocess.DEVNULL) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, str(CHILD), *args], stdin=stdin,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)


def _lines_until(child: subprocess.Popen[bytes], wanted: str) -> list[str]:
    """The child's lines up to and including the first that starts with ``wanted``."""
    assert child.stdout is not None
    lines = []
    while True:
        raw = child.stdout.readline()
        if not raw:
            raise AssertionError(f"child ended before {wanted!r}: {child.stderr.read()!r}"
                                 if child.stderr else "child ended")
        lines.append(raw.decode().strip())
        if lines[-1].startswith(wanted):
            return lines


async def _batches(store: KVStore, prefix: str) -> set[Any]:
    values = await store.get_many(batch_keys(prefix))
    return {None if value is None else orjson.loads(value)["n"] for value in values}


def test_a_reader_never_sees_part_of_a_batch(adapter: str, url: str) -> None:
    prefix = f"message:{uuid.uuid4().hex[:8]}:"
    writer = _child("write", url, prefix)
    reader = _child("read", url, prefix, stdin=subprocess.PIPE)
    try:
        _lines_until(writer, "ack")
        _lines_until(reader, "reading")  # a fast writer could finish before the reader starts
        started = time.monotonic()
        deadline = started + 60
        acked = 0
        assert writer.stdout is not None
        # Let the two race until the reader has had time for READS reads over SEEN batches:
        # READS batches written, and a second at least (a writer that shares commits can
        # write them faster than the reader reads).
        while (acked < READS or time.monotonic() < started + 1) and time.monotonic() < deadline:
            acked += writer.stdout.readline().startswith(b"ack")
        assert reader.stdin is not None
        reader.stdin.close()
        summary = orjson.loads(_lines_until(reader, "{")[-1])
    finally:
        for child in (writer, reader):
            child.kill()
            child.wait()
    assert summary["batches"] >= SEEN and summary["reads"] >= 3, summary
    assert summary["torn"] == 0, summary


async def _check_whole(url: str, prefix: str, acked: int, opened: KVStore) -> set[Any]:
    """Every key of the batch from one batch, the last acknowledged or the one in flight: as
    a handle opened before the crash reads it, and as one opened after it."""
    before = await _batches(opened, prefix)
    async with open_store(url) as fresh:
        after = await _batches(fresh, prefix)
    for seen in (before, after):
        assert len(seen) == 1, f"part of a batch: {sorted(seen, key=str)}"
        assert next(iter(seen)) in (acked, acked + 1)
    return after


async def test_a_killed_writer_leaves_whole_batches(adapter: str, url: str) -> None:
    rng = random.Random(16)
    for round_number in range(KILLS):
        prefix = f"message:k{round_number}{uuid.uuid4().hex[:6]}:"
        async with open_store(url) as opened:
            writer = _child("write", url, prefix)
            lines = _lines_until(writer, "ack")
            time.sleep(rng.uniform(0.0, 0.15))
            writer.send_signal(signal.SIGKILL)
            out, _ = writer.communicate()
            lines += out.decode().splitlines()
            acks = [int(line.split()[1]) for line in lines if line.startswith("ack")]
            await _check_whole(url, prefix, max(acks), opened)


async def test_a_file_store_batch_cut_at_each_rename_is_whole(
        request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """The writer dies just before rename 1 (the journal's) .. KEYS + 1 of batch 2."""
    if "file" not in selected_backends(request.config):
        pytest.skip("the file store is not selected")
    url = f"file://{tmp_path}?namespace=cut"
    seen: dict[int, Any] = {}
    for die_at in (1, 2, 3, KEYS // 2, KEYS, KEYS + 1):
        prefix = f"message:cut{die_at}:"
        async with open_store(url) as opened:
            writer = _child("write", url, prefix, str(die_at))
            _, err = writer.communicate(timeout=60)
            assert writer.returncode == 9, err
            seen[die_at] = await _check_whole(url, prefix, 1, opened)
    # Before the journal's rename the batch is lost whole; from it on, it is finished whole.
    assert seen == {1: {1}, 2: {2}, 3: {2}, KEYS // 2: {2}, KEYS: {2}, KEYS + 1: {2}}
