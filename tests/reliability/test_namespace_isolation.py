"""Namespaces map one-to-one to tables, collections, folders and key prefixes on every store:
two namespaces that differ only in case, or where one is another's name plus the suffix of
an object the store makes beside its table (``__expires``, ``_pkey``), keep apart or one of
them is refused; none is merged. A control character in a URL never reaches a namespace."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import orjson
import pytest

from kvsessions.errors import ConfigError
from kvsessions.kv.registry import open_store
from kvsessions.kv.sqlite import SQLiteStore
from kvsessions.testing import StoreFactory


def pairs(base: str) -> list[tuple[str, str]]:
    """Pairs of namespaces, each pair new (``base`` plus a number), in both orders."""
    found = []
    for number, (one, other) in enumerate([("X", "x"), ("x", "X"), ("", "__expires"),
                                            ("__expires", ""), ("", "_pkey"), ("_pkey", "")]):
        name = f"{base}_{number}"
        cased = {"X": name.upper(), "x": name}
        found.append((cased.get(one, name + one), cased.get(other, name + other)))
    return found


async def test_namespaces_never_share_data(store_factory: StoreFactory) -> None:
    """For each pair, in both orders of opening: either both stores open and each sees only
    its own keys, or the second is refused with a ConfigError that names the clash."""
    for first_name, second_name in pairs(store_factory.namespace):
        first = store_factory.new(first_name)
        second = store_factory.new(second_name)
        async with first:
            await first.put("shared-key", orjson.dumps({"owner": first_name}))
            try:
                await second.open()
            except ConfigError as exc:
                assert second_name in str(exc) and first_name in str(exc), str(exc)
                continue
            try:
                assert await second.get("shared-key") is None, (first_name, second_name)
                await second.put("shared-key", orjson.dumps({"owner": second_name}))
                assert await second.keys() == ["shared-key"]
                assert orjson.loads(await first.get("shared-key") or b"") == {
                    "owner": first_name}
            finally:
                await second.close()


@pytest.mark.parametrize("character", ["%0A", "%09", "%0D", "%00", "%7F", "\n", "\t", "\r"])
@pytest.mark.parametrize("url", ["memory://", "sqlite:///tmp/kvs-isolation.db",
                                 "file:///tmp/kvs-isolation", "redis://127.0.0.1:6379/0",
                                 "postgresql://postgres@127.0.0.1/test",
                                 "mongodb://127.0.0.1:1/db"])
def test_control_characters_in_url_options_are_refused(url: str, character: str) -> None:
    """``?namespace=victim_ns%0A`` (or a raw newline, which urlsplit drops) used to open
    ``victim_ns``: now refused, whichever option holds it."""
    for query in (f"namespace=victim_ns{character}", f"durability=normal{character}"):
        with pytest.raises(ConfigError, match="holds a control character"):
            open_store(f"{url}?{query}")


async def test_sqlite_file_of_an_older_release(tmp_path: Path) -> None:
    """A file whose table ``X`` has the older expiry index ``X__expires``: namespace
    ``X__expires`` is refused (naming ``X``), ``X`` stays readable and, once opened, renames
    its index, after which ``X__expires`` opens beside it."""
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.execute('CREATE TABLE "X" (key TEXT NOT NULL PRIMARY KEY, value BLOB NOT NULL, '
                   "expires_at REAL) WITHOUT ROWID")
        db.execute('CREATE INDEX "X__expires" ON "X" (expires_at) WHERE expires_at IS NOT NULL')
        db.execute('INSERT INTO "X" VALUES (?, ?, NULL)', ("k", b'{"v":1}'))
    with pytest.raises(ConfigError, match="index 'X__expires' of namespace 'X'"):
        await SQLiteStore(path, namespace="X__expires").open()
    async with SQLiteStore(path, namespace="X") as old:
        assert await old.get("k") == b'{"v":1}'
    async with SQLiteStore(path, namespace="X__expires") as beside:
        assert await beside.keys() == []
    with sqlite3.connect(path) as db:
        indexes = db.execute("SELECT name FROM sqlite_master WHERE type = 'index' "
                             "AND tbl_name = 'X'").fetchall()
    assert [name for name, in indexes if "expires" in name] == ["X:expires"]


async def test_sqlite_refuses_a_namespace_in_another_case(tmp_path: Path) -> None:
    path = tmp_path / "cases.db"
    async with SQLiteStore(path, namespace="tenant_x") as store:
        await store.put("k", b"{}")
    with pytest.raises(ConfigError, match="namespace 'tenant_x' has that table already"):
        await SQLiteStore(path, namespace="Tenant_x").open()
