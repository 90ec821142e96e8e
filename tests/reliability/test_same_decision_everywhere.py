"""Every store accepts exactly the same documents and reads each back equal; what cannot be
kept losslessly everywhere is refused before any store sees it, identically on every store."""

from __future__ import annotations

import functools
import math
import warnings
from typing import Any

import orjson
import pytest
from hypothesis import strategies as st
from hypothesis.errors import NonInteractiveExampleWarning

from kvsessions.documents.codec import encode_document
from kvsessions.errors import DocumentTooLargeError, KVSessionsError, ValidationError
from kvsessions.kv.values import MAX_DEPTH, MAX_DOCUMENT_BYTES
from kvsessions.testing import StoreFactory, same_json

NAMES = st.one_of(
    st.text(max_size=6),
    st.sampled_from(["", ".", "a.b", "$x", "$", "_id", " ", "a b", "%", "%2E", "\u0000k",
                     "😀", "\u05e9\u05dc\u05d5\u05dd", "e\u0301"]),
)
TEXT = st.one_of(
    st.text(max_size=20),
    st.sampled_from(["\u0000", "a\u0000b", "\U0001f600\U0001f469\u200d\U0001f469", "\u202eRTL",
                     "e\u0301\u0327", "\uffff", "\U0010ffff", "\\u0000", "1e300", '"', "\\"]),
)
SCALARS = st.one_of(
    st.none(), st.booleans(), TEXT,
    st.integers(-(2**63), 2**63 - 1),
    st.sampled_from([2**53, -(2**53), 2**53 + 1, 2**63 - 1, -(2**63), 0]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([-0.0, 1e300, 1e-300, 1e16, 5e-324, 1.7976931348623157e308, 0.1]),
)
DOCUMENTS = st.dictionaries(
    NAMES,
    st.recursive(SCALARS, lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(NAMES, children, max_size=4)),
        max_leaves=12),
    max_size=6,
)


def nested(depth: int) -> dict[str, Any]:
    node: Any = {"leaf": "\u0000"}
    for level in range(depth - 1, 0, -1):
        node = {"$d.": node} if level % 2 else [node]
    assert isinstance(node, dict)
    return node


@functools.cache
def build_corpus(size: int) -> list[dict[str, Any]]:
    """Built once per test process, on first use (hypothesis takes a few seconds for it)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NonInteractiveExampleWarning)
        corpus = [DOCUMENTS.example() for _ in range(size)]
    corpus += [nested(MAX_DEPTH), {"deep": nested(MAX_DEPTH - 1)}]
    return corpus


async def test_generated_corpus_reads_back_equal_everywhere(
    store_factory: StoreFactory, soak: int
) -> None:
    corpus = build_corpus(1000 * soak)
    keys = [f"doc:{i:06d}" for i in range(len(corpus))]
    async with store_factory.new() as store:
        for start in range(0, len(corpus), 100):
            await store.put_many([(keys[i], orjson.dumps(corpus[i]))
                                  for i in range(start, min(start + 100, len(corpus)))])
        seen = 0
        async for key, value in store.scan("doc:"):
            assert same_json(orjson.loads(value), corpus[int(key[4:])]), key
            seen += 1
        assert seen == len(corpus)
        for index in (0, len(corpus) // 2, len(corpus) - 1):
            value = await store.get(keys[index])
            assert value is not None and same_json(orjson.loads(value), corpus[index])
        await store.delete_many(keys)
    if store_factory.cleanup is not None:
        await store_factory.cleanup()


async def test_fifteen_megabyte_document_everywhere(store_factory: StoreFactory) -> None:
    document = {"blob": "x" * (15 * 1024 * 1024), "tail": "\u0000😀"}
    async with store_factory.new() as store:
        await store.put("huge", orjson.dumps(document))
        value = await store.get("huge")
        assert value is not None and orjson.loads(value) == document
        await store.delete("huge")
    if store_factory.cleanup is not None:
        await store_factory.cleanup()


UNKEEPABLE: dict[str, tuple[Any, type[ValidationError], str]] = {
    "nan": ({"x": {"y": [math.nan]}}, ValidationError, "x/y/0"),
    "infinity": ({"x": math.inf}, ValidationError, "x"),
    "minus_infinity": ({"x": [-math.inf]}, ValidationError, "x/0"),
    "lone_surrogate": ({"x": "a\udc00"}, ValidationError, "x"),
    "lone_surrogate_name": ({"a\ud800": 1}, ValidationError, "/"),
    "int_over_64_bits": ({"x": 2**63}, DocumentTooLargeError, "x"),
    "int_under_64_bits": ({"x": -(2**63) - 1}, DocumentTooLargeError, "x"),
    "too_deep": ({"x": nested(MAX_DEPTH)}, DocumentTooLargeError, "x/$d./0"),
}


@pytest.mark.parametrize("name", sorted(UNKEEPABLE))
def test_codec_refuses_what_no_store_can_keep(name: str) -> None:
    document, error, path = UNKEEPABLE[name]
    with pytest.raises(error) as caught:
        encode_document(document, key="k")
    assert caught.value.path is not None and caught.value.path.startswith(path)


# The same decision at the KV level, for bytes that did not come through the codec.
UNKEEPABLE_BYTES = {
    "nan": b'{"x": NaN}',
    "infinity": b'{"x": Infinity}',
    "overflow_float": b'{"x": 1e400}',
    "lone_surrogate": b'{"x": "\\udc00"}',
    "int_over_64_bits": b'{"x": 9223372036854775808}',
    "int_under_64_bits": b'{"x": -9223372036854775809}',
    "too_deep": orjson.dumps({"x": nested(MAX_DEPTH)}),
    "too_large": b'{"x": "' + b"y" * MAX_DOCUMENT_BYTES + b'"}',
    "invalid_utf8": b'{"x": "\xc3\x28"}',
}


async def test_every_store_refuses_the_same_bytes_the_same_way(
    store_factory: StoreFactory,
) -> None:
    decisions = {}
    async with store_factory.new() as store:
        await store.put("kept", b'{"kept": true}')
        for name, raw in UNKEEPABLE_BYTES.items():
            with pytest.raises(KVSessionsError) as caught:
                await store.put("bad", raw)
            decisions[name] = type(caught.value).__name__
        assert await store.keys() == ["kept"]
    assert decisions == {
        "nan": "InvalidValueError", "infinity": "InvalidValueError",
        "overflow_float": "InvalidValueError", "lone_surrogate": "InvalidValueError",
        "int_over_64_bits": "DocumentTooLargeError", "int_under_64_bits": "DocumentTooLargeError",
        "too_deep": "DocumentTooLargeError", "too_large": "DocumentTooLargeError",
        "invalid_utf8": "InvalidValueError",
    }
