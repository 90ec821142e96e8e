"""Every point of the KV contract, as tests that fail when the point breaks."""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest

from kvsessions.errors import (
    ConfigError,
    EventLoopError,
    InvalidKeyError,
    InvalidValueError,
    KVSessionsError,
    StoreError,
)
from kvsessions.kv.base import MAX_TTL, KVStore
from kvsessions.kv.values import same_json

__all__ = ["HARD_VALUES", "KVStoreContract", "StoreFactory", "same_json", "utf8_sorted"]


@dataclass
class StoreFactory:
    """How the suite gets stores: ``make(namespace)`` builds an unopened store; calling it twice
    with one namespace gives two handles on the same data. ``persistent`` says whether data
    survives ``close()`` (false for the memory store). ``cleanup`` runs after the test."""

    make: Callable[[str], KVStore]
    persistent: bool = True
    namespace: str = field(default_factory=lambda: "t_" + uuid.uuid4().hex[:16])
    cleanup: Callable[[], Awaitable[None]] | None = None
    #: Namespaces the suite created, for ``cleanup`` to drop.
    used_namespaces: set[str] = field(default_factory=set)

    def new(self, namespace: str | None = None) -> KVStore:
        namespace = namespace or self.namespace
        self.used_namespaces.add(namespace)
        return self.make(namespace)


def utf8_sorted(keys: Any, reverse: bool = False) -> list[str]:
    return sorted(keys, key=lambda k: k.encode("utf-8"), reverse=reverse)


def _deep(depth: int) -> dict[str, Any]:
    """A document of exactly ``depth`` nested containers (objects and arrays alternating)."""
    node: Any = {"leaf": True}
    for level in range(depth - 1, 0, -1):
        node = {"d": node} if level % 2 else [node]
    assert isinstance(node, dict)
    return node


#: Documents that must come back exactly, on every store.
HARD_VALUES: dict[str, dict[str, Any]] = {
    "nul_in_string": {"text": "before\u0000after", "list": ["\u0000"], "k\u0001": 1},
    "emoji_rtl_combining": {
        "e": "😀👩‍👩‍👧", "rtl": "שלום مرحبا", "comb": "e\u0301", "bmp": "\uffff"},
    "big_ints": {"a": 2**53 + 1, "b": -(2**53) - 1, "max": 2**63 - 1, "min": -(2**63)},
    "floats": {"f": 1.5, "tiny": 1e-300, "huge": 1e300, "neg0": -0.0, "pi": math.pi, "one": 1.0},
    "deep": {"root": _deep(60)},
    "special_names": {"$x": 1, "a.b": 2, "": 3, "$": {"$in": [1]}, "_id": "mine", ".": "."},
    "empty": {},
    "mixed": {"null": None, "t": True, "f": False, "arr": [1, "2", None, [], {}], "s": ""},
    "escapes": {"q": "\"quote\" \\back\\ \n\t\r\b\f", "ctl": "\u001f\u007f", "\\u0000": "x"},
}


def dumps(document: dict[str, Any]) -> bytes:
    return orjson.dumps(document)


async def _close_and_clean(store: KVStore, store_factory: StoreFactory) -> None:
    await store.close()
    if store_factory.cleanup is not None:
        await store_factory.cleanup()


async def collect(iterator: AsyncIterator[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    return [item async for item in iterator]


async def values(store: KVStore, keys: list[str]) -> list[Any]:
    """The documents under ``keys`` (None where missing): stores may give back another
    spelling of the JSON written."""
    return [None if value is None else orjson.loads(value)
            for value in await store.get_many(keys)]


@contextlib.asynccontextmanager
async def shared_handles(store_factory: StoreFactory, store: KVStore,
                         extra: int) -> AsyncIterator[list[KVStore]]:
    """``store`` and, where the store shares data between handles (``persistent``), ``extra``
    more open handles on its namespace, for races between handles; the extra ones are closed
    afterwards."""
    handles = [store] + [store_factory.new() for _ in range(extra if store_factory.persistent
                                                              else 0)]
    try:
        for handle in handles[1:]:
            await handle.open()
        yield handles
    finally:
        for handle in handles[1:]:
            await handle.close()


class KVStoreContract:
    """Subclass this with a ``store_factory`` fixture returning a ``StoreFactory``."""

    @pytest.fixture
    async def store(self, store_factory: StoreFactory) -> AsyncIterator[KVStore]:
        store = store_factory.new()
        await store.open()
        try:
            yield store
        finally:
            await store.close()
            if store_factory.cleanup is not None:
                await store_factory.cleanup()

    # ---------------------------------------------------------------- basics

    async def test_get_missing_is_none(self, store: KVStore) -> None:
        assert await store.get("nothing-here") is None

    async def test_put_get_roundtrip_and_overwrite(self, store: KVStore) -> None:
        await store.put("k", dumps({"n": 1}))
        assert orjson.loads(await store.get("k") or b"") == {"n": 1}
        await store.put("k", dumps({"n": 2, "more": [1, 2]}))
        assert orjson.loads(await store.get("k") or b"") == {"n": 2, "more": [1, 2]}

    async def test_delete_reports_whether_something_was_deleted(self, store: KVStore) -> None:
        await store.put("k", dumps({"n": 1}))
        assert await store.delete("k") is True
        assert await store.get("k") is None
        assert await store.delete("k") is False

    async def test_returns_bytes(self, store: KVStore) -> None:
        await store.put("k", dumps({"n": 1}))
        assert type(await store.get("k")) is bytes
        assert all(type(v) is bytes for _, v in await collect(store.scan()))

    # ---------------------------------------------------------------- keys

    @pytest.mark.parametrize(
        "bad_key",
        ["", "a\x00b", "x" * 513, "é" * 257, "\ud800", 7, None, b"bytes", ("t",)],
        ids=["empty", "nul", "513_ascii", "514_bytes_utf8", "lone_surrogate", "int", "none",
             "bytes", "tuple"],
    )
    async def test_bad_keys_are_refused_and_store_nothing(
        self, store: KVStore, bad_key: Any
    ) -> None:
        await store.put("keep", dumps({"kept": True}))
        for attempt in (
            store.put(bad_key, dumps({"x": 1})),
            store.put_if_absent(bad_key, dumps({"x": 1})),
            store.get(bad_key),
            store.delete(bad_key),
            store.put_many([("fine", dumps({"x": 1})), (bad_key, dumps({"x": 1}))]),
            store.get_many(["fine", bad_key]),
            store.compare_and_set(bad_key, None, dumps({"x": 1})),
        ):
            with pytest.raises(InvalidKeyError):
                await attempt
        assert await store.keys() == ["keep"]

    async def test_longest_keys_are_accepted(self, store: KVStore) -> None:
        keys = ["x" * 512, "é" * 256, "😀" * 128, "a" + "€" * 170]
        for key in keys:
            assert len(key.encode()) <= 512
            await store.put(key, dumps({"k": key}))
        for key in keys:
            assert orjson.loads(await store.get(key) or b"") == {"k": key}
        assert await store.keys() == utf8_sorted(keys)

    async def test_unicode_keys_roundtrip(self, store: KVStore) -> None:
        keys = ["ключ", "键/值", "a b", "../../etc/passwd", "/abs", "CON", "..", ".", "con",
                "Con", "a\\b", "e\u0301", "\u00e9", "😀", "tab\tkey", "new\nline", "?*<>|:\""]
        for index, key in enumerate(keys):
            await store.put(key, dumps({"i": index}))
        for index, key in enumerate(keys):
            assert orjson.loads(await store.get(key) or b"") == {"i": index}, key
        assert await store.keys() == utf8_sorted(keys)

    # ---------------------------------------------------------------- values

    @pytest.mark.parametrize(
        "bad_value",
        ["{}", {"a": 1}, b"not json", b"[1, 2]", b"42", b'"s"', b"null", b"\xff\xfe{}",
         b'{"a": NaN}', b'{"a": 1e999}', b'{"a": 1} extra', b"", b'{"s": "\\ud800"}',
         b'{"big": 18446744073709551616}', b'{"big": -9223372036854775809}',
         b"[" * 120 + b"]" * 120],
        ids=["str", "dict", "not_json", "array", "number", "string", "null", "bad_utf8", "nan",
             "inf", "trailing", "empty", "lone_surrogate", "int_over_64_bits", "int_under_64",
             "too_deep_array"],
    )
    async def test_bad_values_are_refused_and_change_nothing(
        self, store: KVStore, bad_value: Any
    ) -> None:
        original = dumps({"original": True})
        await store.put("k", original)
        for attempt in (
            store.put("k", bad_value),
            store.put_if_absent("new", bad_value),
            store.put_many([("other", dumps({"fine": 1})), ("k", bad_value)]),
            store.compare_and_set("k", await store.get("k"), bad_value),
            store.compare_and_set("new", None, bad_value),
        ):
            with pytest.raises(KVSessionsError):
                await attempt
        assert orjson.loads(await store.get("k") or b"") == {"original": True}
        assert await store.keys() == ["k"]

    async def test_too_deep_object_is_refused(self, store: KVStore) -> None:
        with pytest.raises(KVSessionsError, match="deeper"):
            await store.put("k", dumps({"root": _deep(101)}))
        await store.put("k", dumps(_deep(100)))
        assert same_json(orjson.loads(await store.get("k") or b""), _deep(100))

    @pytest.mark.parametrize("name", sorted(HARD_VALUES))
    async def test_hard_values_roundtrip(self, store: KVStore, name: str) -> None:
        document = HARD_VALUES[name]
        await store.put(name, dumps(document))
        assert same_json(orjson.loads(await store.get(name) or b""), document)
        [(key, value)] = await collect(store.scan(name))
        assert key == name and same_json(orjson.loads(value), document)
        assert same_json(orjson.loads((await store.get_many([name]))[0] or b""), document)

    async def test_four_megabyte_value(self, store: KVStore) -> None:
        document = {"blob": "x" * (4 * 1024 * 1024), "n": list(range(1000))}
        await store.put("big", dumps(document))
        assert orjson.loads(await store.get("big") or b"") == document

    # ---------------------------------------------------------------- scans

    ORDER_KEYS = ("a", "B", "b", "ab", "a\x01", "é", "e", "z", "~", "\uffff", "\U00010000",
                  "😀", "日本", "A", "0", "9", " ", "a/b", "a-b", "a.b", "\u007f", "\u0080")

    async def test_scan_is_in_utf8_byte_order(self, store: KVStore) -> None:
        await store.put_many([(k, dumps({"k": k})) for k in self.ORDER_KEYS])
        assert await store.keys() == utf8_sorted(self.ORDER_KEYS)
        assert await store.keys(reverse=True) == utf8_sorted(self.ORDER_KEYS, reverse=True)
        items = await collect(store.scan())
        assert all(orjson.loads(v) == {"k": k} for k, v in items)

    @pytest.mark.parametrize("wild", ["%", "_", "\\", "*", "?", "[", "]", ".", "^", "$", "'"])
    async def test_prefix_is_literal(self, store: KVStore, wild: str) -> None:
        keys = [f"p{wild}1", f"p{wild}2", "pX1", "p1", "pa", f"q{wild}", f"{wild}p", "p",
                f"p{wild}"]
        await store.put_many([(k, dumps({})) for k in keys])
        assert await store.keys(f"p{wild}") == utf8_sorted([f"p{wild}1", f"p{wild}2", f"p{wild}"])
        assert await store.keys(f"p{wild}", reverse=True) == utf8_sorted(
            [f"p{wild}1", f"p{wild}2", f"p{wild}"], reverse=True)

    async def test_prefix_with_highest_code_point(self, store: KVStore) -> None:
        keys = ["a\U0010ffff", "a\U0010ffffz", "b", "a\U0010fffe"]
        await store.put_many([(k, dumps({})) for k in keys])
        assert await store.keys("a\U0010ffff") == ["a\U0010ffff", "a\U0010ffffz"]

    async def test_paging_forwards_and_backwards_is_exact(self, store: KVStore) -> None:
        keys = [f"page:{i:04d}" for i in range(57)] + ["other:1", "pagf", "pag"]
        await store.put_many([(k, dumps({"k": k})) for k in keys])
        expected = [k for k in utf8_sorted(keys) if k.startswith("page:")]
        for reverse in (False, True):
            seen: list[str] = []
            cursor = None
            while True:
                page = [k for k, _ in await collect(
                    store.scan("page:", start_after=cursor, limit=10, reverse=reverse))]
                seen += page
                if len(page) < 10:
                    break
                cursor = page[-1]
            assert seen == (expected[::-1] if reverse else expected)

    async def test_start_after_any_string(self, store: KVStore) -> None:
        keys = ["b1", "b3", "b5"]
        await store.put_many([(k, dumps({})) for k in keys])
        assert await self._keys(store, "b", start_after="b2") == ["b3", "b5"]
        assert await self._keys(store, "b", start_after="b2", reverse=True) == ["b1"]
        assert await self._keys(store, "b", start_after="a") == keys
        assert await self._keys(store, "b", start_after="c") == []
        assert await self._keys(store, "b", start_after="c", reverse=True) == keys[::-1]
        assert await self._keys(store, "b", start_after="a", reverse=True) == []
        assert await self._keys(store, "b", start_after="b5") == []
        assert await self._keys(store, "", start_after="b3", reverse=True) == ["b1"]

    async def _keys(self, store: KVStore, prefix: str, **kwargs: Any) -> list[str]:
        return [k for k, _ in await collect(store.scan(prefix, **kwargs))]

    async def test_scan_limit(self, store: KVStore) -> None:
        await store.put_many([(f"k{i}", dumps({})) for i in range(5)])
        assert await self._keys(store, "", limit=0) == []
        assert await self._keys(store, "", limit=2) == ["k0", "k1"]
        assert await self._keys(store, "", limit=2, reverse=True) == ["k4", "k3"]
        assert await self._keys(store, "", limit=100) == [f"k{i}" for i in range(5)]
        for bad in (-1, 1.5, "3", True):
            with pytest.raises(KVSessionsError):
                await collect(store.scan(limit=bad))  # type: ignore[arg-type]

    async def test_scan_streams_in_batches(self, store: KVStore) -> None:
        store.scan_batch_size = 7
        keys = [f"s{i:05d}" for i in range(150)]
        for start in range(0, len(keys), 50):
            await store.put_many([(k, dumps({"k": k})) for k in keys[start:start + 50]])
        assert await store.keys() == keys
        assert await store.keys(reverse=True) == keys[::-1]
        assert await self._keys(store, "s", start_after="s00006", limit=8) == keys[7:15]

    async def test_scan_pages_match_scan(self, store: KVStore) -> None:
        store.scan_batch_size = 6
        keys = [f"p{i:03d}" for i in range(40)]
        await store.put_many([(k, dumps({"k": k})) for k in keys])
        for kwargs in ({}, {"reverse": True}, {"limit": 13}, {"start_after": "p010", "limit": 7},
                       {"reverse": True, "start_after": "p030", "limit": 20}):
            pages = [page async for page in store.scan_pages("p", **kwargs)]
            assert all(pages), "pages are never empty"
            flat = [item for page in pages for item in page]
            assert flat == await collect(store.scan("p", **kwargs)), kwargs
        assert [k for page in [p async for p in store.scan_pages("p", limit=13)]
                for k, _ in page] == keys[:13]

    #: Keys of many partitions and runs (``kvsessions.kv.partitions``) whose runs interleave
    #: in key order: "s" and "s0" are partitions whose keys sort differently by kind.
    PARTITIONED_KEYS = (
        "session:s", "session:s0", "session:s%3A1", "session:t", "message:s:01", "message:s:02",
        "message:s:10", "message:s0:01", "message:s%3A1:01", "message:sa:01", "message:t:01",
        "index:sessions:2026-01-01T00:00:00.000000Z:t", "index:sessions:2026-01-02:s",
        "index:status:active:2026:s", "index:state", "index:", "index", "a", "a:", "a::",
        "a::b", "a:b", "a:b:", "a:b:c", "a:bb:c", ":", "::", ":x:y", "z\U0010ffff:q:r")

    async def test_scan_order_across_partitions(self, store: KVStore) -> None:
        """Scans over any prefix and from any cursor, in both directions and in small pages,
        give key order when the keys lie in many partitions and their runs interleave."""
        store.scan_batch_size = 2
        keys = utf8_sorted(self.PARTITIONED_KEYS)
        await store.put_many([(k, dumps({"k": k})) for k in keys[::2]])
        for k in keys[1::2]:
            await store.put(k, dumps({"k": k}))
        prefixes = {k[:n] for k in keys for n in range(len(k) + 1)} | {"message:s:0", "b"}
        for prefix in sorted(prefixes):
            expected = [k for k in keys if k.startswith(prefix)]
            assert await store.keys(prefix) == expected, prefix
            assert await store.keys(prefix, reverse=True) == expected[::-1], prefix
        for cursor in [*keys, "message:s:05", "message:s", "a:b:b", "session:s1"]:
            after = [k for k in keys if k > cursor]
            before = [k for k in keys if k < cursor][::-1]
            assert await self._keys(store, "", start_after=cursor) == after, cursor
            assert await self._keys(store, "", start_after=cursor, limit=3) == after[:3]
            assert await self._keys(store, "", start_after=cursor, reverse=True) == before

    async def test_scan_bad_arguments(self, store: KVStore) -> None:
        for kwargs in ({"start_after": "\x00"}, {"start_after": 5}):
            with pytest.raises(InvalidKeyError):
                await collect(store.scan(**kwargs))
        with pytest.raises(InvalidKeyError):
            await collect(store.scan(5))  # type: ignore[arg-type]

    # ---------------------------------------------------------------- ttl

    async def test_ttl_expiry_is_invisible_at_once(self, store: KVStore) -> None:
        await store.put("short", dumps({"v": 1}), ttl=0.6)
        await store.put_many([("short2", dumps({"v": 2})), ("short3", dumps({"v": 3}))], ttl=0.6)
        await store.put("long", dumps({"v": 4}), ttl=600)
        await store.put("forever", dumps({"v": 5}))
        assert await store.get("short") is not None
        assert await store.keys() == ["forever", "long", "short", "short2", "short3"]
        await asyncio.sleep(0.9)
        assert await store.get("short") is None
        assert await store.get_many(["short", "short2", "long"]) == [
            None, None, await store.get("long")]
        assert await store.keys() == ["forever", "long"]
        assert await store.keys(reverse=True) == ["long", "forever"]
        assert await store.delete("short") is False
        assert await store.delete_many(["short2", "short3", "forever"]) == 1
        assert await store.put_if_absent("short", dumps({"v": 6})) is True
        assert orjson.loads(await store.get("short") or b"") == {"v": 6}

    async def test_put_without_ttl_clears_an_earlier_ttl(self, store: KVStore) -> None:
        await store.put("k", dumps({"v": 1}), ttl=0.4)
        await store.put("k", dumps({"v": 2}))
        await asyncio.sleep(0.6)
        assert orjson.loads(await store.get("k") or b"") == {"v": 2}

    async def test_expired_keys_across_scan_pages(self, store: KVStore) -> None:
        store.scan_batch_size = 4
        await store.put_many([(f"x{i:02d}", dumps({})) for i in range(0, 30, 2)])
        await store.put_many([(f"x{i:02d}", dumps({})) for i in range(1, 30, 2)], ttl=0.3)
        await asyncio.sleep(0.5)
        expected = [f"x{i:02d}" for i in range(0, 30, 2)]
        assert await store.keys() == expected
        assert await store.keys(reverse=True) == expected[::-1]

    async def test_limit_counts_only_live_keys(self, store: KVStore) -> None:
        await store.put_many([(f"e{i}", dumps({})) for i in range(5)], ttl=0.3)
        await store.put_many([(f"l{i}", dumps({})) for i in range(3)])
        await store.put_many([(f"z{i}", dumps({})) for i in range(5)], ttl=0.3)
        await asyncio.sleep(0.5)
        assert await self._keys(store, "", limit=2) == ["l0", "l1"]
        assert await self._keys(store, "", limit=2, reverse=True) == ["l2", "l1"]

    async def test_get_and_last(self, store: KVStore) -> None:
        async def get_and_last(key: str, prefix: str) -> tuple[Any, Any]:
            value, last = await store.get_and_last(key, prefix)
            return (None if value is None else orjson.loads(value),
                    None if last is None else (last[0], orjson.loads(last[1])))

        store.scan_batch_size = 2
        await store.put_many([(k, dumps({"k": k})) for k in (
            "h", "m", "m:1", "m:2", "m;", "\U0010ffff", "\U0010ffffz")])
        await store.put_many([(k, dumps({"k": k})) for k in ("m:3", "m:4")], ttl=0.4)
        assert await get_and_last("h", "m:") == ({"k": "h"}, ("m:4", {"k": "m:4"}))
        assert await get_and_last("none", "\U0010ffff") == (
            None, ("\U0010ffffz", {"k": "\U0010ffffz"}))
        assert await get_and_last("h", "n:") == ({"k": "h"}, None)
        await asyncio.sleep(0.6)  # expired items are not the last one
        assert await get_and_last("m:4", "m:") == (None, ("m:2", {"k": "m:2"}))
        with pytest.raises(InvalidKeyError):
            await store.get_and_last("", "m:")

    @pytest.mark.parametrize("bad_ttl", [0, -1, math.nan, math.inf, "5", True])
    async def test_bad_ttl_is_refused(self, store: KVStore, bad_ttl: Any) -> None:
        with pytest.raises(KVSessionsError):
            await store.put("k", dumps({}), ttl=bad_ttl)
        assert await store.get("k") is None

    async def test_ttl_limit_is_the_same_on_every_store(self, store: KVStore) -> None:
        """Up to ``MAX_TTL`` (100 years) is kept; beyond it every store gives the same
        ``InvalidValueError``, from every writing method, and stores nothing."""
        await store.put("longest", dumps({"v": 1}), ttl=MAX_TTL)
        assert await store.put_if_absent("longest2", dumps({"v": 2}), ttl=MAX_TTL) is True
        await store.put_many([("longest3", dumps({"v": 3}))], ttl=MAX_TTL)
        assert await store.keys() == ["longest", "longest2", "longest3"]
        for too_long in (MAX_TTL * 1.001, 1e13, 3e11, 1e17, 1e300):
            writes = (lambda ttl: store.put("k", dumps({}), ttl=ttl),
                      lambda ttl: store.put_if_absent("k", dumps({}), ttl=ttl),
                      lambda ttl: store.put_many([("k", dumps({}))], ttl=ttl))
            for write in writes:
                with pytest.raises(InvalidValueError, match=r"at most .* seconds"):
                    await write(too_long)
        assert await store.get("k") is None

    # ---------------------------------------------------------------- batches

    async def test_batches(self, store: KVStore) -> None:
        await store.put_many([("b", dumps({"v": "b"})), ("a", dumps({"v": "a"})),
                              ("b", dumps({"v": "b2"}))])
        values = await store.get_many(["b", "missing", "a", "b"])
        assert [orjson.loads(v) if v else None for v in values] == [
            {"v": "b2"}, None, {"v": "a"}, {"v": "b2"}]
        assert await store.get_many([]) == []
        await store.put_many([])
        assert await store.delete_many(["a", "missing", "a"]) == 1
        assert await store.keys() == ["b"]
        assert await store.delete_many([]) == 0

    async def test_put_many_takes_a_generator(self, store: KVStore) -> None:
        await store.put_many((f"g{i}", dumps({"i": i})) for i in range(20))
        assert len(await store.keys("g")) == 20

    async def test_put_many_bad_shapes(self, store: KVStore) -> None:
        for items in ([("only-key",)], ["ab"], "ab", [("k", dumps({}), 1)]):
            with pytest.raises(KVSessionsError):
                await store.put_many(items)  # type: ignore[arg-type]
        assert await store.keys() == []

    # ---------------------------------------------------------------- atomicity

    async def test_put_if_absent(self, store: KVStore) -> None:
        assert await store.put_if_absent("k", dumps({"v": 1})) is True
        assert await store.put_if_absent("k", dumps({"v": 2})) is False
        assert orjson.loads(await store.get("k") or b"") == {"v": 1}

    async def test_put_if_absent_has_one_winner(self, store_factory: StoreFactory,
                                                store: KVStore) -> None:
        async with shared_handles(store_factory, store, 3) as handles:
            results = await asyncio.gather(*(
                handles[i % len(handles)].put_if_absent("race", dumps({"who": i}))
                for i in range(20)))
        assert sum(results) == 1
        winner = results.index(True)
        assert orjson.loads(await store.get("race") or b"") == {"who": winner}

    # ---------------------------------------------------------------- compare_and_set

    async def test_compare_and_set(self, store: KVStore) -> None:
        one, two = dumps({"v": 1}), dumps({"v": 2, "list": [1, "x"]})
        assert await store.compare_and_set("k", None, None) is True  # absent, stays absent
        assert await store.compare_and_set("k", None, one) is True  # create
        assert await store.compare_and_set("k", None, two) is False  # not absent any more
        assert await store.compare_and_set("k", None, None) is False
        current = await store.get("k")
        assert current is not None and orjson.loads(current) == {"v": 1}
        assert await store.compare_and_set("k", dumps({"v": 3}), two) is False
        assert orjson.loads(await store.get("k") or b"") == {"v": 1}
        assert await store.compare_and_set("k", current, two) is True  # replace
        assert orjson.loads(await store.get("k") or b"") == {"v": 2, "list": [1, "x"]}
        assert await store.compare_and_set("k", current, one) is False  # stale value
        assert await store.keys() == ["k"]
        latest = await store.get("k")
        assert await store.compare_and_set("k", latest, None) is True  # delete
        assert await store.get("k") is None and await store.keys() == []
        assert await store.compare_and_set("k", latest, one) is False  # gone
        assert await store.get("k") is None and await store.keys() == []

    async def test_compare_and_set_tells_apart_what_json_tells_apart(
        self, store: KVStore
    ) -> None:
        await store.put("k", dumps({"a": 1, "b": {"c": [1, 2]}}))
        for other in ({"a": 1.5, "b": {"c": [1, 2]}}, {"a": 1, "b": {"c": [2, 1]}},
                      {"a": 1, "b": {"c": [1, 2], "d": None}}, {"a": 1},
                      {"a": "1", "b": {"c": [1, 2]}}, {"a": True, "b": {"c": [1, 2]}},
                      {"a": 1, "b": {"c": [[1, 2]]}}, {"a": [1], "b": {"c": [1, 2]}},
                      {"a": 1, "b": {"c": [1, 2]}, "e": 0}):
            assert await store.compare_and_set("k", dumps(other), dumps({})) is False, other
        assert orjson.loads(await store.get("k") or b"") == {"a": 1, "b": {"c": [1, 2]}}

    @pytest.mark.parametrize("name", sorted(HARD_VALUES))
    async def test_compare_and_set_from_a_value_read_back(self, store: KVStore,
                                                          name: str) -> None:
        await store.put(name, dumps(HARD_VALUES[name]))
        read = await store.get(name)
        scanned = [value for _, value in await collect(store.scan(name))]
        assert await store.compare_and_set(name, read, dumps({"step": 1})) is True
        assert await store.compare_and_set(name, dumps({"step": 1}), dumps(HARD_VALUES[name]))
        assert await store.compare_and_set(name, scanned[0], None) is True
        assert await store.get(name) is None

    async def test_compare_and_set_treats_expired_as_absent(self, store: KVStore) -> None:
        await store.put("k", dumps({"v": 1}), ttl=0.3)
        old = await store.get("k")
        assert await store.compare_and_set("k", old, dumps({"v": 2}), ttl=0.3) is True
        await asyncio.sleep(0.5)
        assert await store.compare_and_set("k", dumps({"v": 2}), dumps({"v": 3})) is False
        assert await store.compare_and_set("k", None, dumps({"v": 4})) is True
        assert await store.keys() == ["k"]
        await asyncio.sleep(0.4)  # the value written by compare_and_set has no ttl
        assert orjson.loads(await store.get("k") or b"") == {"v": 4}

    async def test_compare_and_set_bad_arguments_change_nothing(self, store: KVStore) -> None:
        await store.put("k", dumps({"v": 1}))
        current = await store.get("k")
        for call in (
            store.compare_and_set("k", "text", dumps({})),  # type: ignore[arg-type]
            store.compare_and_set("k", {"v": 1}, dumps({})),  # type: ignore[arg-type]
            store.compare_and_set("k", current, None, ttl=5),
            store.compare_and_set("k", current, dumps({}), ttl=0),
            store.compare_and_set("k", current, "{}"),  # type: ignore[arg-type]
        ):
            with pytest.raises(KVSessionsError):
                await call
        assert await store.get("k") == current

    async def test_compare_and_set_has_one_winner(self, store_factory: StoreFactory,
                                                  store: KVStore) -> None:
        async with shared_handles(store_factory, store, 3) as handles:
            for expected in (None, dumps({"round": 0})):
                if expected is not None:
                    await store.put("race", expected)
                    expected = await store.get("race")
                results = await asyncio.gather(*(
                    handles[i % len(handles)].compare_and_set(
                        "race", expected, dumps({"who": i})) for i in range(20)))
                assert sum(results) == 1
                winner = results.index(True)
                assert orjson.loads(await store.get("race") or b"") == {"who": winner}

    async def test_compare_and_set_counter_loses_no_increment(
        self, store_factory: StoreFactory, store: KVStore
    ) -> None:
        """Read, add one, compare-and-set, read again on False: what the session layer does
        for message counts. Concurrent incrementers through several handles lose nothing."""

        async def increment(handle: KVStore) -> None:
            while True:
                current = await handle.get("counter")
                count = 0 if current is None else orjson.loads(current)["n"]
                if await handle.compare_and_set("counter", current, dumps({"n": count + 1})):
                    return

        async with shared_handles(store_factory, store, 2) as handles:
            await asyncio.gather(*(increment(handles[i % len(handles)]) for i in range(30)))
        assert orjson.loads(await store.get("counter") or b"") == {"n": 30}

    async def test_compare_and_set_with(self, store: KVStore) -> None:
        """The other writes happen exactly when the compare matched (and, where the store
        says it is atomic, not at all otherwise): what index entries need."""
        atomic = store.atomic_compare_and_set_with
        await store.put_many([("old:1", dumps({"o": 1})), ("old:2", dumps({"o": 2}))])
        assert await store.compare_and_set_with("h", None, dumps({"v": 1}),
                                                put=[("new:1", dumps({"n": 1}))],
                                                delete=["old:1"]) is True
        assert await store.keys() == ["h", "new:1", "old:2"]
        assert await store.compare_and_set_with("h", None, dumps({"v": 2}),
                                                put=[("new:2", dumps({"n": 2}))],
                                                delete=["old:2"]) is False
        assert await store.get("old:2") is not None
        assert (await store.get("new:2") is None) if atomic else True
        current = await store.get("h")
        assert await store.compare_and_set_with("h", current, dumps({"v": 3}),
                                                delete=["new:1", "missing"]) is True
        assert orjson.loads(await store.get("h") or b"") == {"v": 3}
        assert await store.get("new:1") is None
        latest = await store.get("h")
        assert await store.compare_and_set_with("h", latest, None,
                                                put=[("after", dumps({}))]) is True
        assert await store.get("h") is None and await store.get("after") is not None
        assert await store.compare_and_set_with("h", None, None, delete=["after"]) is True
        assert await store.get("after") is None

    async def test_compare_and_set_with_creates_only_absent_keys(self, store: KVStore) -> None:
        atomic = store.atomic_compare_and_set_with
        await store.put("taken", dumps({"t": 1}))
        await store.put("h", dumps({"v": 1}))
        current = await store.get("h")
        assert await store.compare_and_set_with(
            "h", current, dumps({"v": 2}), create=[("free", dumps({"f": 1})),
                                                   ("taken", dumps({"t": 2}))],
            delete=["h2"]) is False
        assert await store.get("h") == current  # nothing happened
        assert orjson.loads(await store.get("taken") or b"") == {"t": 1}
        assert await store.get("free") is None
        assert await store.compare_and_set_with(
            "h", dumps({"v": 9}), dumps({"v": 2}), create=[("free", dumps({"f": 1}))]) is False
        assert await store.get("free") is None  # created only with the head change
        assert await store.compare_and_set_with(
            "h", current, dumps({"v": 2}), create=[("free", dumps({"f": 1}))],
            put=[("taken", dumps({"t": 3}))], delete=["other"]) is True
        assert orjson.loads(await store.get("free") or b"") == {"f": 1}
        assert orjson.loads(await store.get("taken") or b"") == {"t": 3}
        assert orjson.loads(await store.get("h") or b"") == {"v": 2}
        assert atomic in (True, False)

    async def test_compare_and_set_with_bad_arguments_change_nothing(
        self, store: KVStore
    ) -> None:
        await store.put("k", dumps({"v": 1}))
        current = await store.get("k")
        for create, put, delete in (
                ([], [("k", dumps({}))], []), ([], [], ["k"]), ([], [("x", dumps({}))], ["x"]),
                ([("x", dumps({}))], [("x", dumps({}))], []), ([("k", dumps({}))], [], []),
                ([], [("x", b"[1]")], []), ([("x", b"1")], [], []), ([], [("", dumps({}))], []),
                ([], [("x", dumps({}), 1)], [])):
            with pytest.raises(KVSessionsError):
                await store.compare_and_set_with(
                    "k", current, dumps({"v": 2}), create=create, put=put,  # type: ignore[arg-type]
                    delete=delete)
        assert await store.keys() == ["k"] and await store.get("k") == current

    async def test_compare_and_set_with_has_one_winner(self, store_factory: StoreFactory,
                                                       store: KVStore) -> None:
        async with shared_handles(store_factory, store, 2) as handles:
            await store.put("race", dumps({"round": 0}))
            await store.put("shared", dumps({}))
            expected = await store.get("race")
            results = await asyncio.gather(*(
                handles[i % len(handles)].compare_and_set_with(
                    "race", expected, dumps({"who": i}), put=[(f"mine:{i:02d}", dumps({}))],
                    delete=["shared"]) for i in range(12)))
        assert sum(results) == 1
        winner = results.index(True)
        assert orjson.loads(await store.get("race") or b"") == {"who": winner}
        assert await store.get("shared") is None
        if store.atomic_compare_and_set_with:
            assert await store.keys("mine:") == [f"mine:{winner:02d}"]

    async def test_compare_and_set_with_swaps_other_keys(self, store: KVStore) -> None:
        """``swap``: other keys compared with a value read and then replaced or deleted,
        with the head's compare-and-set, all or nothing (on every store when no one else
        writes: the default undoes its swaps when a later compare fails)."""
        await store.put_many([("h", dumps({"v": 1})), ("m:1", dumps({"m": 1})),
                              ("m:2", dumps({"m": 2}))])
        head, first, second = await store.get_many(["h", "m:1", "m:2"])
        assert head is not None and first is not None and second is not None
        for stale_head, swap in (
                (dumps({"v": 0}), [("m:1", first, dumps({"m": 10})), ("m:2", second, None)]),
                (head, [("m:1", first, dumps({"m": 10})), ("m:2", dumps({"m": 0}), None)]),
                (head, [("m:1", first, None), ("m:3", dumps({"m": 3}), dumps({"m": 4}))])):
            assert await store.compare_and_set_with(
                "h", stale_head, dumps({"v": 2}), put=[("p", dumps({}))], delete=["m:0"],
                swap=swap) is False
            assert await values(store, ["h", "m:1", "m:2", "m:3"]) == [
                {"v": 1}, {"m": 1}, {"m": 2}, None]
            if store.atomic_compare_and_set_with:
                assert await store.get("p") is None
        assert await store.compare_and_set_with(
            "h", head, dumps({"v": 2}), swap=[("m:1", first, dumps({"m": 10})),
                                              ("m:2", second, None)]) is True
        assert await values(store, ["h", "m:1", "m:2"]) == [{"v": 2}, {"m": 10}, None]
        assert await store.keys() == ["h", "m:1", "p"] or await store.keys() == ["h", "m:1"]

    async def test_compare_and_set_with_swap_refuses_bad_arguments(
        self, store: KVStore
    ) -> None:
        await store.put("k", dumps({"v": 1}))
        current = await store.get("k")
        assert current is not None
        for swap in ([("k", current, None)], [("x", None, dumps({}))],
                     [("x", current, b"[1]")], [("x", current)], [("x", current, None),
                                                                  ("x", current, None)],
                     [("", current, None)], ["x"]):
            with pytest.raises(KVSessionsError):
                await store.compare_and_set_with(
                    "k", current, dumps({"v": 2}), swap=swap)  # type: ignore[arg-type]
        with pytest.raises(KVSessionsError):
            await store.compare_and_set_with("k", current, dumps({"v": 2}), delete=["x"],
                                             swap=[("x", current, None)])
        assert await store.keys() == ["k"] and await store.get("k") == current

    async def test_compare_and_set_with_swap_races_a_delete(
        self, store_factory: StoreFactory, store: KVStore
    ) -> None:
        """A counted removal by ``swap`` and a plain delete of the same key, concurrently:
        exactly one of them removes it (so a count taken down by both would be wrong)."""
        extra = 1 if store_factory.persistent else 0
        other = store_factory.new() if extra else store
        if extra:
            await other.open()
        try:
            for round_ in range(10):
                await store.put_many([("count", dumps({"n": round_})),
                                      ("item", dumps({"r": round_}))])
                head, item = await store.get_many(["count", "item"])
                assert head is not None and item is not None
                popped, deleted = await asyncio.gather(
                    store.compare_and_set_with("count", head, dumps({"n": round_ - 1}),
                                               swap=[("item", item, None)]),
                    other.delete("item"))
                assert popped != deleted
                # each read on a handle that wrote the key last (a cached store's other
                # handles see a write once its invalidation arrives)
                assert await (store if popped else other).get("item") is None
                assert orjson.loads(await store.get("count") or b"") == {
                    "n": round_ - 1 if popped else round_}
        finally:
            if extra:
                await other.close()

    async def test_compare_and_set_with_swap_has_one_winner(
        self, store_factory: StoreFactory, store: KVStore
    ) -> None:
        """Writers that all read one head and one key: one wins; where atomic, the others
        wrote nothing."""
        async with shared_handles(store_factory, store, 2) as handles:
            await store.put_many([("race", dumps({"round": 0})), ("item", dumps({"i": 0}))])
            head, item = await store.get_many(["race", "item"])
            assert head is not None and item is not None
            results = await asyncio.gather(*(
                handles[i % len(handles)].compare_and_set_with(
                    "race", head, dumps({"who": i}), put=[(f"mine:{i:02d}", dumps({}))],
                    swap=[("item", item, dumps({"i": i}))]) for i in range(12)))
            assert sum(results) == 1
            winner = results.index(True)
            # read on the winner's handle, which wrote last (see the test above)
            assert await values(handles[winner % len(handles)], ["race", "item"]) == [
                {"who": winner}, {"i": winner}]
        if store.atomic_compare_and_set_with:
            assert await store.keys("mine:") == [f"mine:{winner:02d}"]

    async def test_many_concurrent_puts(self, store: KVStore) -> None:
        await asyncio.gather(*(store.put(f"c{i:03d}", dumps({"i": i})) for i in range(200)))
        items = await collect(store.scan("c"))
        assert [k for k, _ in items] == [f"c{i:03d}" for i in range(200)]
        assert all(orjson.loads(v) == {"i": int(k[1:])} for k, v in items)

    async def test_concurrent_writers_on_one_key_leave_one_whole_value(
        self, store: KVStore
    ) -> None:
        documents = [{"writer": i, "payload": str(i) * 5000} for i in range(30)]
        await asyncio.gather(*(store.put("hot", dumps(d)) for d in documents))
        assert orjson.loads(await store.get("hot") or b"") in documents

    # ---------------------------------------------------------------- lifecycle

    async def test_persists_across_close_and_reopen(self, store_factory: StoreFactory,
                                                    store: KVStore) -> None:
        if not store_factory.persistent:
            pytest.skip("this store keeps nothing across close()")
        await store.put("kept", dumps({"v": HARD_VALUES["emoji_rtl_combining"]}))
        await store.close()
        async with store_factory.new() as again:
            assert same_json(orjson.loads(await again.get("kept") or b""),
                             {"v": HARD_VALUES["emoji_rtl_combining"]})

    async def test_closed_store_refuses_calls(self, store: KVStore) -> None:
        await store.close()
        with pytest.raises(StoreError):
            await store.get("k")

    async def test_context_manager_opens_and_closes(self, store_factory: StoreFactory) -> None:
        async with store_factory.new() as handle:
            await handle.put("k", dumps({}))
            assert await handle.get("k") == dumps({})
        with pytest.raises(StoreError):
            await handle.get("k")

    async def test_namespaces_are_isolated(self, store_factory: StoreFactory,
                                           store: KVStore) -> None:
        if not store_factory.persistent:
            pytest.skip("every memory store is its own namespace")
        other_name = store_factory.namespace + "_other"
        async with store_factory.new(other_name) as other:
            await store.put("shared-key", dumps({"ns": 1}))
            await other.put("shared-key", dumps({"ns": 2}))
            await other.put("only-other", dumps({"ns": 2}))
            assert orjson.loads(await store.get("shared-key") or b"") == {"ns": 1}
            assert await store.keys() == ["shared-key"]
            assert await other.keys() == ["only-other", "shared-key"]
            await other.delete("shared-key")
            assert await store.get("shared-key") is not None

    @pytest.mark.parametrize(
        "namespace",
        ["", "1abc", "a-b", "a;drop table x", 'a"b', "a'b", "a b", "a.b", "$a", "a\x00",
         "system.x", "x" * 64, "ä", "a--", "\u0430"],  # the last is a Cyrillic confusable of "a"
    )
    def test_hostile_namespaces_are_refused(self, store_factory: StoreFactory,
                                            namespace: str) -> None:
        with pytest.raises(ConfigError):
            store_factory.make(namespace)

    def test_repr_names_the_store(self, store: KVStore) -> None:
        assert type(store).__name__ in repr(store)

    # ---------------------------------------------------------------- event loops

    def test_serves_one_event_loop_after_another(self, store_factory: StoreFactory) -> None:
        """Frameworks call ``asyncio.run`` (or ``Runner.run_sync``) again and again: one store
        serves each new loop, writes and scans included."""
        store = store_factory.new()

        async def step(run: int) -> None:
            await store.put(f"run-{run}", dumps({"run": run}))
            await store.put_many([(f"batch-{run}-{i}", dumps({"i": i})) for i in range(3)])
            value = await store.get(f"run-{run}")
            assert value is not None and orjson.loads(value) == {"run": run}
            assert await store.compare_and_set(f"run-{run}", value,
                                               dumps({"run": run, "ok": True}))
            assert await store.keys("run-") == [f"run-{i}" for i in range(run + 1)]

        try:
            for run in range(3):
                asyncio.run(step(run))
        finally:
            asyncio.run(_close_and_clean(store, store_factory))

    def test_serves_two_threads_each_with_its_own_loop(self, store_factory: StoreFactory
                                                       ) -> None:
        """Two threads, each running its own loop, open one store at the same moment and use
        it at once: nothing hangs; each store serves both, or (``loops_at_once`` False)
        refuses the second loop with an ``EventLoopError`` that names it."""
        store = store_factory.new()
        start = threading.Barrier(2, timeout=30)
        both_called = threading.Barrier(2, timeout=30)
        errors: dict[int, BaseException] = {}

        async def work(thread: int) -> None:
            await asyncio.to_thread(start.wait)
            try:
                await store.put(f"t{thread}-00", dumps({"thread": thread}))
            finally:
                await asyncio.to_thread(both_called.wait)  # both loops are running now
            for i in range(1, 20):
                await store.put(f"t{thread}-{i:02}", dumps({"thread": thread, "i": i}))
                assert await store.get(f"t{thread}-{i:02}") is not None
            assert len(await store.keys(f"t{thread}-")) == 20

        def run(thread: int) -> None:
            try:
                asyncio.run(work(thread))
            except BaseException as exc:
                errors[thread] = exc

        threads = [threading.Thread(target=run, args=(n,), daemon=True) for n in (1, 2)]
        try:
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=120)
            assert not any(thread.is_alive() for thread in threads), "a loop hangs"
            if store.loops_at_once:
                assert not errors, errors
                expected = 40
            else:
                assert len(errors) == 1, errors
                (error,) = errors.values()
                assert isinstance(error, EventLoopError), error
                assert "event loop 0x" in str(error)
                expected = 20

            async def check() -> None:
                assert len(await store.keys("t")) == expected

            asyncio.run(check())
        finally:
            asyncio.run(_close_and_clean(store, store_factory))
