"""A hypothesis state machine that holds a store against a plain dict."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import orjson
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from kvsessions.testing.contract import StoreFactory, same_json, utf8_sorted

__all__ = ["run_state_machine"]

# A small alphabet with LIKE/glob wildcards and multi-byte characters, so keys collide and
# prefixes overlap often.
KEYS = st.text(alphabet="ab%_\\*[é😀", min_size=1, max_size=4)
DOCS = st.dictionaries(st.sampled_from(["a", "$b", "c.d", ""]),
                       st.one_of(st.integers(-(2**63), 2**63 - 1), st.text(max_size=8),
                                 st.booleans(), st.none()), max_size=3)


def run_state_machine(factory: StoreFactory, *, max_examples: int = 25, steps: int = 30) -> None:
    """Run random sequences of put, delete, put_if_absent, compare_and_set, get_many and paged
    scans against a store from ``factory`` and a dict, failing on the first difference."""

    class StoreMatchesDict(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.loop = asyncio.new_event_loop()
            self.store = factory.new(f"sm_{uuid.uuid4().hex[:12]}")
            self.run(self.store.open())
            self.model: dict[str, bytes] = {}

        def run(self, awaitable: Any) -> Any:
            return self.loop.run_until_complete(awaitable)

        def teardown(self) -> None:
            try:
                self.run(self.store.delete_many(list(self.model)))
                self.run(self.store.close())
            finally:
                self.loop.close()

        @rule(key=KEYS, doc=DOCS)
        def put(self, key: str, doc: dict[str, Any]) -> None:
            value = orjson.dumps(doc)
            self.run(self.store.put(key, value))
            self.model[key] = value

        @rule(items=st.lists(st.tuples(KEYS, DOCS), max_size=5))
        def put_many(self, items: list[tuple[str, dict[str, Any]]]) -> None:
            pairs = [(k, orjson.dumps(d)) for k, d in items]
            self.run(self.store.put_many(pairs))
            self.model.update(pairs)

        @rule(key=KEYS)
        def delete(self, key: str) -> None:
            assert self.run(self.store.delete(key)) == (key in self.model)
            self.model.pop(key, None)

        @rule(key=KEYS, doc=DOCS)
        def put_if_absent(self, key: str, doc: dict[str, Any]) -> None:
            value = orjson.dumps(doc)
            stored = self.run(self.store.put_if_absent(key, value))
            assert stored == (key not in self.model)
            self.model.setdefault(key, value)

        @rule(key=KEYS, expected=st.sampled_from(["current", "absent", "other"]),
              other=DOCS, new=st.one_of(st.none(), DOCS))
        def compare_and_set(self, key: str, expected: str, other: dict[str, Any],
                            new: dict[str, Any] | None) -> None:
            current = self.run(self.store.get(key))
            if expected == "current":
                given = current
            elif expected == "absent":
                given = None
            elif key in self.model and same_json(other, orjson.loads(self.model[key])):
                return  # equal documents may differ in bytes: only JSON-native stores match
            else:
                given = orjson.dumps(other)
            value = None if new is None else orjson.dumps(new)
            swapped = self.run(self.store.compare_and_set(key, given, value))
            assert swapped == ((given is None and key not in self.model)
                               or (given is not None and given == current))
            if swapped and value is None:
                self.model.pop(key, None)
            elif swapped and value is not None:
                self.model[key] = value

        @rule(keys=st.lists(KEYS, max_size=5))
        def get_many(self, keys: list[str]) -> None:
            got = self.run(self.store.get_many(keys))
            assert [orjson.loads(v) if v else None for v in got] == [
                orjson.loads(self.model[k]) if k in self.model else None for k in keys]

        @rule(prefix=st.text(alphabet="ab%_\\*[é😀", max_size=2),
              page=st.integers(1, 4), reverse=st.booleans())
        def paged_scan(self, prefix: str, page: int, reverse: bool) -> None:
            expected = [k for k in utf8_sorted(self.model, reverse=reverse) if k.startswith(prefix)]

            async def pages() -> list[str]:
                seen: list[str] = []
                cursor = None
                for _ in range(len(expected) + 2):
                    got = [k async for k, _ in self.store.scan(
                        prefix, start_after=cursor, limit=page, reverse=reverse)]
                    seen += got
                    if len(got) < page:
                        break
                    cursor = got[-1]
                return seen

            assert self.run(pages()) == expected

        @invariant()
        def values_match(self) -> None:
            items = self.run(_collect(self.store))
            assert [k for k, _ in items] == utf8_sorted(self.model)
            assert all(orjson.loads(v) == orjson.loads(self.model[k]) for k, v in items)

    StoreMatchesDict.TestCase.settings = settings(
        max_examples=max_examples, stateful_step_count=steps, deadline=None,
        suppress_health_check=list(HealthCheck))
    StoreMatchesDict.TestCase().runTest()


async def _collect(store: Any) -> list[tuple[str, bytes]]:
    return [item async for item in store.scan()]
