"""Parallel migration (``workers=N``): the same result as one worker on several pairs of stores
and key layouts, ranges split while the copy runs, the checkpoint plan of several streams, and
a refused occupied destination. The kill-and-resume test with workers is in
``test_migration_resume.py``."""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvsessions.errors import ConfigError
from kvsessions.kv.base import KVStore
from kvsessions.kv.memory import MemoryStore
from kvsessions.kv.values import RESERVED_PREFIX, reserved_keys_allowed
from kvsessions.migration import MigrationProgress, migrate_storage, verify_migration
from kvsessions.migration.checkpoint import (
    CopiedInterval,
    ResumePlan,
    encode_checkpoint,
    stream_checkpoint_key,
)
from kvsessions.migration.streams import Stream, StreamPool, key_between
from tests.test_migration import populate, sample_documents


def sessions_layout() -> dict[str, bytes]:
    """Many sessions of the SessionStorage layout (heads, messages, files, hard values)."""
    return sample_documents(sessions=100, messages=20, files=30)


def one_big_session() -> dict[str, bytes]:
    """One session's messages: every key shares a long prefix."""
    return {f"message:s1:{i:08d}": orjson.dumps({"i": i, "t": "x" * (i % 50)})
            for i in range(3000)}


def skewed() -> dict[str, bytes]:
    """A few keys spread wide, then a dense block, non-ASCII keys and keys around the
    reserved prefix (which sorts between upper and lower case)."""
    documents = {f"A{i}": b"{}" for i in range(5)}
    documents |= {f"m\u00e9ssage:{i:05d}": orjson.dumps({"i": i}) for i in range(2000)}
    documents |= {f"z\U0001F600{i}": b"{\"e\":1}" for i in range(40)}
    documents |= {f"_{i}": b"{}" for i in range(20)}
    return documents


LAYOUTS = {"sessions": sessions_layout, "one_big_session": one_big_session, "skewed": skewed}
PAIRS = [("sqlite", "postgresql"), ("sqlite", "redis"), ("postgresql", "mongodb"),
         ("file", "sqlite"), ("redis", "file")]


async def snapshot(store: KVStore) -> dict[str, Any]:
    return {key: orjson.loads(value) async for key, value in store.scan()}


@pytest.mark.parametrize(("source_name", "destination_name"), PAIRS)
@pytest.mark.parametrize("layout", list(LAYOUTS))
async def test_workers_copy_exactly_what_one_worker_copies(
    stores: Callable[[str], KVStore], source_name: str, destination_name: str, layout: str
) -> None:
    documents = LAYOUTS[layout]()
    source = stores(source_name)
    await populate(source, documents)
    one, four = stores(destination_name), stores(destination_name)
    seen: list[int] = []

    single = await migrate_storage(source, one, batch_size=50)
    parallel = await migrate_storage(source, four, batch_size=50, workers=4,
                                     progress_callback=lambda p: seen.append(p.documents))

    assert single["verified"] is True and parallel["verified"] is True, parallel["verification"]
    assert await snapshot(one) == await snapshot(four)  # no checkpoint left in either
    same = ("documents_copied", "sessions_migrated", "messages_migrated", "files_migrated",
            "invalid_documents", "resumed_from", "documents_copied_before_resume")
    assert {k: parallel[k] for k in same} == {k: single[k] for k in same}
    assert parallel["invalid"] == single["invalid"]  # the same 100 first keys, in order
    assert parallel["documents_copied"] == len(documents)
    assert parallel["streams"] >= 2, "four workers never split the key space"
    # Progress counts every stream: it rises to the total, one batch at a time.
    assert seen == sorted(seen) and seen[-1] == len(documents)


async def test_every_worker_has_a_stream_before_the_first_batch() -> None:
    """A stream that copies its whole range at once (a machine where the copy outruns the
    splitting) still leaves one stream per worker: the first splits race no copy."""
    keys = [f"message:s{i:04d}:m" for i in range(1000)]
    copied: list[list[str]] = []

    async def probe(after: str) -> str | None:
        await asyncio.sleep(0)
        found = bisect.bisect_right(keys, after)
        return keys[found] if found < len(keys) else None

    async def run(stream: Stream) -> None:
        start = 0 if stream.resume_after is None else bisect.bisect_right(keys,
                                                                         stream.resume_after)
        part = [key for key in keys[start:] if stream.upto is None or key <= stream.upto]
        stream.handed([(key, b"{}") for key in part])
        copied.append(part)

    pool = StreamPool(4, run, probe, first_key=keys[0], last_key=keys[-1], skip=8,
                      min_split=50, next_number=1)
    await pool.run([Stream(0, None, None, None)])
    assert len(copied) == 4 and all(copied)
    assert sorted(key for part in copied for key in part) == keys


async def test_a_prefix_is_split_and_nothing_outside_it_is_copied() -> None:
    source, destination = MemoryStore(namespace="a"), MemoryStore(namespace="b")
    await populate(source, one_big_session() | {"message:s2:1": b"{}", "message:s0": b"{}"})
    result = await migrate_storage(source, destination, prefix="message:s1:", workers=3,
                                   batch_size=20, validate=False)
    assert result["documents_copied"] == 3000 and result["verified"] is True
    assert result["streams"] >= 3
    assert await destination.keys() == await source.keys("message:s1:")


async def test_workers_still_refuse_an_occupied_destination() -> None:
    source, destination = MemoryStore(namespace="a"), MemoryStore(namespace="b")
    await populate(source, one_big_session())
    await destination.put("session:other", b"{}")
    with pytest.raises(ConfigError, match="session:other"):
        await migrate_storage(source, destination, workers=4)
    assert await destination.keys() == ["session:other"]
    result = await migrate_storage(source, destination, workers=4, merge=True, validate=False)
    assert result["documents_copied"] == 3000
    assert result["verification"]["extra"] == ["session:other"]


async def test_a_resume_copies_only_the_gaps_between_stream_checkpoints() -> None:
    """Checkpoints of three streams, as a killed 3-worker run leaves them: the next run (with
    any number of workers) copies what lies between them and counts the rest as done."""
    source = MemoryStore(namespace="a")
    documents = {f"k{i:04d}": orjson.dumps({"i": i}) for i in range(1000)}
    await populate(source, documents)
    identity = {"source": repr(source), "prefix": "", "upgrade": False}
    for workers in (1, 2, 5):
        destination = MemoryStore(namespace="b")
        done = [(0, None, "k0099", 100), (4, "k0399", "k0449", 50), (7, "k0699", "k0999", 300)]
        await destination.put_many([(f"k{i:04d}", documents[f"k{i:04d}"])
                                    for i in [*range(100), *range(400, 450), *range(700, 1000)]])
        for stream, after, last, copied in done:
            key = stream_checkpoint_key("", stream)
            with reserved_keys_allowed(key):
                await destination.put(key, encode_checkpoint(identity, last, copied, after=after))
        written: list[str] = []
        inner_put_many = destination.put_many

        async def spy(items: Any, inner: Any = inner_put_many, seen: list[str] = written,
                      **kwargs: Any) -> None:
            items = list(items)
            seen.extend(k for k, _ in items if not k.startswith(RESERVED_PREFIX))
            await inner(items, **kwargs)

        destination.put_many = spy  # type: ignore[method-assign]
        result = await migrate_storage(source, destination, workers=workers, batch_size=40,
                                       validate=False)
        assert result["verified"] is True
        assert result["documents_copied_before_resume"] == 450
        assert result["documents_copied"] == 550
        assert result["resumed_from"] == "k0099"
        assert sorted(written) == [f"k{i:04d}" for i in [*range(100, 400), *range(450, 700)]]
        assert not [k for k in await destination.keys() if k.startswith(RESERVED_PREFIX)]


def test_the_gaps_of_a_plan() -> None:
    a = CopiedInterval(0, None, "c", 3)
    b = CopiedInterval(2, "f", "h", 2)
    assert ResumePlan().gaps() == [(None, None, None)]
    assert ResumePlan((a,)).gaps() == [("c", None, a)]
    assert ResumePlan((a, b)).gaps() == [("c", "f", a), ("h", None, b)]
    assert ResumePlan((b,)).gaps() == [(None, "f", None), ("h", None, b)]
    touching = CopiedInterval(3, "c", "e", 2)
    assert ResumePlan((a, touching, b)).gaps() == [("e", "f", touching), ("h", None, b)]


@given(st.text(min_size=1, max_size=20), st.text(min_size=1, max_size=20))
def test_key_between_is_strictly_between_and_a_valid_start_after(x: str, y: str) -> None:
    x = x.replace("\x00", "a").encode("utf-8", "replace").decode()
    y = y.replace("\x00", "a").encode("utf-8", "replace").decode()
    low, high = min(x, y), max(x, y)
    middle = key_between(low, high)
    if middle is None:
        return
    assert low < middle < high
    assert "\x00" not in middle
    middle.encode("utf-8")  # no lone surrogate


def test_key_between_lands_near_the_middle_of_digits() -> None:
    middle = key_between("message:s1:00000000", "message:s1:00099999", skip=11)
    assert middle is not None and middle.startswith("message:s1:0004")


async def test_progress_of_a_dry_run_with_workers_counts_every_document() -> None:
    source, destination = MemoryStore(namespace="a"), MemoryStore(namespace="b")
    await populate(source, one_big_session())
    last: list[MigrationProgress] = []
    result = await migrate_storage(source, destination, workers=4, dry_run=True,
                                   batch_size=100, progress_callback=last.append)
    assert result["documents_copied"] == 3000 and last[-1].documents == 3000
    assert await destination.keys() == []
    assert (await verify_migration(source, destination))["missing_count"] == 3000


async def test_copy_and_verify_with_workers_stay_in_bounded_memory(tmp_path: Path) -> None:
    """Four times the documents, about the same peak of traced memory: streams and verify
    hold batches, never the store."""
    import tracemalloc

    from kvsessions.kv.sqlite import SQLiteStore

    peaks = []
    for size in (3000, 12000):
        source = SQLiteStore(tmp_path / f"src{size}.db", namespace="kv")
        destination = SQLiteStore(tmp_path / f"dst{size}.db", namespace="kv")
        async with source, destination:
            for start in range(0, size, 1000):
                await source.put_many([(f"message:s{i % 13}:{i:06d}",
                                        orjson.dumps({"i": i, "t": "x" * 300}))
                                       for i in range(start, start + 1000)])
            tracemalloc.start()
            try:
                base = tracemalloc.get_traced_memory()[0]
                result = await migrate_storage(source, destination, workers=4, batch_size=200,
                                               validate=False)
                peaks.append(tracemalloc.get_traced_memory()[1] - base)
            finally:
                tracemalloc.stop()
            assert result["verified"] is True and result["documents_copied"] == size
    assert peaks[1] < 1.6 * peaks[0] + 2_000_000, peaks
