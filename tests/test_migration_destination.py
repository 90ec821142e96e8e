"""Migrating into a store that already holds other documents is refused before anything is
written, naming what is there, unless merging was asked for (issue 15, item 5)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from kvsessions.errors import ConfigError
from kvsessions.kv.memory import MemoryStore
from kvsessions.kv.values import reserved_keys_allowed
from kvsessions.migration import checkpoint_key, migrate_storage
from tests.cli import fill, keys_of, one_error_line, run_kvsessions
from tests.test_migration import _CrashingDestination, populate, sample_documents

DOCUMENTS = sample_documents(sessions=2, messages=3, files=1)
FOREIGN = {"session:1": orjson.dumps({"kind": "session", "v": 1, "other": "application"})}


def test_migrate_refuses_an_occupied_destination_and_merges_when_asked(tmp_path: Path) -> None:
    source = f"sqlite:///{tmp_path}/source.db"
    destination = f"sqlite:///{tmp_path}/destination.db"
    fill(source, DOCUMENTS)
    fill(destination, FOREIGN)

    done = run_kvsessions("migrate", source, destination)

    line = one_error_line(done, "migrate")
    assert "already holds documents" in line and "'session:1'" in line and "--merge" in line
    assert keys_of(destination) == ["session:1"]  # nothing written, not even a checkpoint

    merged = run_kvsessions("migrate", source, destination, "--merge", "--no-verify", "-q")
    assert merged.returncode == 0, merged.stderr
    assert sorted(keys_of(destination)) == sorted([*DOCUMENTS, *FOREIGN])


async def test_dry_run_refuses_too_and_a_stale_checkpoint_is_left_alone() -> None:
    source, destination = MemoryStore(namespace="a"), MemoryStore(namespace="b")
    await populate(source, DOCUMENTS)
    await populate(destination, FOREIGN)
    stale = {"kind": "migration-checkpoint", "last_key": "x", "copied": 1,
             "identity": {"source": "elsewhere", "prefix": "", "upgrade": False}}
    with reserved_keys_allowed(checkpoint_key("")):
        await destination.put(checkpoint_key(""), orjson.dumps(stale))

    for dry_run in (True, False):
        with pytest.raises(ConfigError, match="'session:1'"):
            await migrate_storage(source, destination, dry_run=dry_run, validate=False)

    with reserved_keys_allowed(checkpoint_key("")):
        assert orjson.loads(await destination.get(checkpoint_key("")) or b"") == stale
    assert await destination.keys() == sorted([checkpoint_key(""), "session:1"])


async def test_documents_under_another_prefix_do_not_count() -> None:
    source, destination = MemoryStore(namespace="a"), MemoryStore(namespace="b")
    await populate(source, DOCUMENTS)
    await populate(destination, FOREIGN)
    result = await migrate_storage(source, destination, prefix="message:", validate=False)
    assert result["documents_copied"] == sum(k.startswith("message:") for k in DOCUMENTS)


async def test_a_run_that_died_in_its_first_batch_is_resumed_without_merging() -> None:
    source = MemoryStore(namespace="a")
    await populate(source, DOCUMENTS)
    destination = _CrashingDestination(crash_at=1)  # half of the first batch lands

    with pytest.raises(Exception, match="simulated crash"):
        await migrate_storage(source, destination, batch_size=100, validate=False)
    assert await destination.keys()  # something of this migration is there

    destination.crash_at = None
    result = await migrate_storage(source, destination, batch_size=100, validate=False)
    assert result["verified"] is True and result["documents_copied"] == len(DOCUMENTS)
