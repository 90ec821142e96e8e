"""Resume after ``kill -9`` (and Ctrl-C) at random points of a 60,000-document CLI migration,
with one worker and with several: after every kill no checkpoint is ahead of the data, and the
last run ends with both stores equal, every document copied once in the count, and no
checkpoint left."""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from kvsessions.kv.registry import open_store
from kvsessions.migration import checkpoint_key, verify_migration
from tests.backends.postgresql import POSTGRES_URL, drop_tables

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = 60_000
BATCH = 500
KILLS = 4
_PROGRESS = re.compile(r"^migrate: ([\d,]+) documents")


def document(i: int) -> bytes:
    return orjson.dumps({"kind": "message", "v": 1, "i": i, "text": f"line {i} " + "x" * 160})


async def fill(url: str) -> None:
    async with open_store(url) as store:
        for start in range(0, DOCUMENTS, 5000):
            await store.put_many([(f"message:s{i % 7}:{i:06d}", document(i))
                                  for i in range(start, min(start + 5000, DOCUMENTS))])


async def check_checkpoint_not_ahead(source_url: str, destination_url: str,
                                     ranges: list[int] | None = None) -> int:
    """For every stream's checkpoint (one per worker's range, ``(after, last_key]``): every
    source document in its range is in the destination, equal, and the checkpoint's count is
    exactly how many there are. Returns their sum (0: no checkpoint with a last key)."""
    async with open_store(source_url) as source, open_store(destination_url) as destination:
        states = [orjson.loads(raw) async for _, raw in destination.scan(checkpoint_key(""))]
        total = 0
        for state in states:
            last, after = state.get("last_key"), state.get("after")
            if last is None:  # a run that has not finished its first batch
                continue
            behind: list[tuple[str, bytes]] = []
            async for key, value in source.scan(start_after=after):
                if key > last:
                    break
                behind.append((key, value))
            for start in range(0, len(behind), 1000):
                chunk = behind[start:start + 1000]
                stored = await destination.get_many([key for key, _ in chunk])
                for (key, value), got in zip(chunk, stored, strict=True):
                    assert got is not None, f"checkpoint {last!r} ran ahead of missing {key!r}"
                    assert orjson.loads(got) == orjson.loads(value), key
            assert state["copied"] == len(behind)
            total += len(behind)
        if ranges is not None:
            ranges.append(sum(state.get("last_key") is not None for state in states))
        return total


def start_migration(source_url: str, destination_url: str, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "kvsessions", "migrate", source_url, destination_url,
         "--batch-size", str(BATCH), "--progress-interval", "0", "--no-validate", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)


def interrupt_at(process: subprocess.Popen[str], target: int, how: int) -> bool:
    """Send ``how`` once the migration reports ``target`` documents; False if it finished
    first."""
    assert process.stderr is not None
    for line in process.stderr:
        found = _PROGRESS.match(line)
        if found and int(found.group(1).replace(",", "")) >= target:
            process.send_signal(how)
            break
    process.communicate(timeout=120)
    return process.returncode != 0


@pytest.fixture
def destinations(request: Any, tmp_path: Path) -> Any:
    tables: set[str] = set()

    def make(kind: str) -> str:
        if kind == "sqlite":
            return f"sqlite:///{tmp_path / 'destination.db'}?namespace=kv"
        table = "resume_" + uuid.uuid4().hex[:12]
        tables.add(table)
        return f"{POSTGRES_URL}?namespace={table}"

    yield make
    asyncio.run(drop_tables(POSTGRES_URL, tables))


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 4])
@pytest.mark.parametrize("destination_kind", ["sqlite", "postgresql"])
def test_kill_9_at_random_points_then_resume(
    tmp_path: Path, destinations: Any, destination_kind: str, workers: int
) -> None:
    """With several workers every stream keeps a checkpoint of its own; the runs after a kill
    use another number of workers each time (the gaps between checkpoints are what is left)."""
    seed = int(os.environ.get("KVSESSIONS_TEST_SEED", random.randrange(2**32)))
    rng = random.Random(seed)
    source_url = f"sqlite:///{tmp_path / 'source.db'}?namespace=kv"
    destination_url = destinations(destination_kind)
    asyncio.run(fill(source_url))

    done_before = 0
    interrupted = 0
    ranges: list[int] = []  # copied ranges (stream checkpoints) found after each kill
    for attempt in range(KILLS + 1):
        if DOCUMENTS - done_before < 4 * BATCH:
            break
        # At most a third of what is left: the signal must arrive while thousands of documents
        # are still to copy (two batches of margin were too few once the copy got faster).
        target = rng.randrange(done_before + BATCH, done_before + (DOCUMENTS - done_before) // 3)
        how = signal.SIGINT if attempt == KILLS else signal.SIGKILL
        process = start_migration(source_url, destination_url,
                                  "--workers", str(workers + attempt % 2 * (workers > 1)))
        if not interrupt_at(process, target, how):
            break
        interrupted += 1
        expected = -signal.SIGKILL if how == signal.SIGKILL else 130
        assert process.returncode == expected, (seed, process.returncode)
        done_now = asyncio.run(check_checkpoint_not_ahead(source_url, destination_url, ranges))
        assert done_now >= done_before, seed  # progress is never lost
        done_before = done_now
    assert interrupted >= 2, f"the migration finished before it could be killed (seed {seed})"
    assert max(ranges) >= (2 if workers > 1 else 1), (seed, ranges)

    process = start_migration(source_url, destination_url, "--json", "--workers", str(workers))
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, (seed, err)
    result = orjson.loads(out)
    assert result["resumed_from"] is not None, seed
    assert result["documents_copied_before_resume"] == done_before
    assert result["documents_copied"] + done_before == DOCUMENTS
    assert result["verified"] is True

    async def final_state() -> None:
        async with open_store(source_url) as source, open_store(destination_url) as destination:
            assert [key async for key, _ in destination.scan(checkpoint_key(""))] == []
            verification = await verify_migration(source, destination)
            assert verification["ok"] and verification["destination_count"] == DOCUMENTS

    asyncio.run(final_state())
