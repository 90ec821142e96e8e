"""Keys under ``__kvsessions__:`` (issue 11, item 6): kvsessions keeps them for its own
bookkeeping, so every store refuses them to users, and a migration, export or backup that says
it copied everything has copied every key a user could store. On every store and wrapper."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from kvsessions.errors import InvalidKeyError
from kvsessions.kv.base import KVStore
from kvsessions.kv.memory import MemoryStore
from kvsessions.kv.values import RESERVED_PREFIX, reserved_keys_allowed
from kvsessions.migration import (
    backup_storage,
    checkpoint_key,
    export_to_json,
    import_from_json,
    migrate_storage,
)
from kvsessions.testing import StoreFactory

#: Keys next to the reserved prefix that are ordinary user keys and must travel everywhere.
NEIGHBOURS = ["__kvsessions__", "__kvsessions__;x", "__kvsessions_:x", "__KVSESSIONS__:x",
              "_kvsessions__:x", "a:__kvsessions__:x"]
RESERVED = [RESERVED_PREFIX + "x", RESERVED_PREFIX, RESERVED_PREFIX + "migrate:0000000000000000",
            checkpoint_key("")]


@pytest.fixture
async def store(store_factory: StoreFactory) -> AsyncIterator[KVStore]:
    store = store_factory.new("res_" + uuid.uuid4().hex[:12])
    await store.open()
    try:
        yield store
    finally:
        await store.close()
        if store_factory.cleanup is not None:
            await store_factory.cleanup()


async def test_every_store_refuses_reserved_keys_and_keeps_nothing(store: KVStore) -> None:
    await store.put("kept", b'{"v":1}')
    for key in RESERVED:
        with pytest.raises(InvalidKeyError, match="reserved for kvsessions"):
            await store.put(key, b'{"v":2}')
        with pytest.raises(InvalidKeyError, match="reserved"):
            await store.put_many([("fine", b'{"v":3}'), (key, b'{"v":2}')])
        with pytest.raises(InvalidKeyError, match="reserved"):
            await store.put_if_absent(key, b'{"v":2}')
        with pytest.raises(InvalidKeyError, match="reserved"):
            await store.get(key)
        with pytest.raises(InvalidKeyError, match="reserved"):
            await store.get_many(["kept", key])
        with pytest.raises(InvalidKeyError, match="reserved"):
            await store.delete(key)
        with pytest.raises(InvalidKeyError, match="reserved"):
            await store.delete_many(["kept", key])
    assert [key async for key, _ in store.scan()] == ["kept"]  # nothing written, nothing lost


async def test_only_the_key_allowed_gets_through_and_only_inside_the_block(
    store: KVStore
) -> None:
    own, other = RESERVED_PREFIX + "own", RESERVED_PREFIX + "other"
    with reserved_keys_allowed(own):
        await store.put(own, b'{"mine":true}')
        assert orjson.loads(await store.get(own) or b"null") == {"mine": True}
        with pytest.raises(InvalidKeyError):
            await store.put(other, b"{}")
        assert await store.delete(own) is True
    with pytest.raises(InvalidKeyError):
        await store.put(own, b"{}")


async def test_migrate_export_and_backup_carry_every_key_a_user_can_store(
    store: KVStore, tmp_path: Path
) -> None:
    documents = {key: orjson.dumps({"key": key}) for key in [*NEIGHBOURS, "session:s", "z"]}
    await store.put_many(list(documents.items()))
    destination = MemoryStore(namespace="dst")

    result = await migrate_storage(store, destination, batch_size=2, validate=False)

    assert result["verified"] is True and result["documents_copied"] == len(documents)
    assert sorted(await destination.keys()) == sorted(documents)
    exported = await export_to_json(store, tmp_path / "dump.jsonl")
    assert exported["documents_exported"] == len(documents)
    backup = await backup_storage(store, tmp_path / "backups")
    restored = MemoryStore(namespace="restored")
    assert (await import_from_json(restored, backup["path"]))["documents_imported"] == len(
        documents)
    assert sorted(await restored.keys()) == sorted(documents)
    # A migration into this store keeps its checkpoint to itself and leaves none behind.
    back = await migrate_storage(destination, store, batch_size=3, validate=False)
    assert back["verified"] is True
    with reserved_keys_allowed(checkpoint_key("")):
        assert await store.get(checkpoint_key("")) is None



async def test_reserved_keys_left_by_an_older_release_are_named_not_silently_skipped(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    source = MemoryStore(namespace="old")
    legacy, checkpoint = RESERVED_PREFIX + "user-data", checkpoint_key("")
    with reserved_keys_allowed(legacy, checkpoint):  # as a release before the refusal wrote
        await source.put_many([("a", b"{}"), (legacy, b"{}"), (checkpoint, b"{}")])
    with caplog.at_level("WARNING", logger="kvsessions.migration"):
        result = await export_to_json(source, tmp_path / "dump.jsonl")
    assert result["documents_exported"] == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "left out 1 key(s)" in warnings[0] and legacy in warnings[0]
