"""KVSessionsSaver (kvsessions.integrations.langgraph) on SQLite, PostgreSQL, Redis and MongoDB:
LangGraph's own conformance kit (``langgraph-checkpoint-conformance``, every capability),
a real graph run through the sync and the async API, the documents it stores, bad input."""

from __future__ import annotations

import operator
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any, TypedDict

import orjson
import pytest
from langgraph.channels.delta import DeltaChannel
from langgraph.checkpoint.base import WRITES_IDX_MAP, empty_checkpoint
from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.checkpoint.conformance.capabilities import BASE_CAPABILITIES, EXTENDED_CAPABILITIES
from langgraph.graph import END, START, StateGraph

from kvsessions.documents.validation import validate_document
from kvsessions.errors import StoreError, ValidationError
from kvsessions.integrations.checkpoint_reader import (
    _is_checkpoint,
    _is_writes,
    read_saver_document,
)
from kvsessions.integrations.langgraph import (
    PREFIX,
    KVSessionsSaver,
    checkpoint_key,
    key_part,
    write_prefix,
)
from kvsessions.kv.memory import MemoryStore
from kvsessions.migration.in_place import validate_storage
from kvsessions.sessions.storage import SessionStorage
from kvsessions.wrappers.validating import ValidatingStore
from tests.cli import run_kvsessions
from tests.integrations.conftest import IntegrationStore

#: The channel of a task's error: a special write, which replaces the one stored.
ERROR = next(channel for channel, idx in WRITES_IDX_MAP.items() if idx == -1)
#: The base tests of the kit, per capability (langgraph-checkpoint-conformance 0.0.2: 58), and
#: every extended one (copy_thread, delete_for_runs, prune).
BASE = sorted(capability.value for capability in BASE_CAPABILITIES)
EXTENDED = sorted(capability.value for capability in EXTENDED_CAPABILITIES)


@pytest.mark.parametrize("capability", BASE + EXTENDED)
async def test_conformance_kit_base_capability(integration_store: IntegrationStore,
                                               capability: str) -> None:
    @checkpointer_test(name=f"kvsessions-{integration_store.backend}")
    async def saver() -> Any:
        yield KVSessionsSaver(integration_store.store())

    report = await validate(saver, capabilities={capability})
    result = report.results[capability]
    assert result.detected, f"{capability} not detected"
    assert result.passed, "\n".join(str(failure) for failure in result.failures or [])
    assert result.tests_passed > 0 and result.tests_failed == 0


class State(TypedDict):
    said: Annotated[list[str], operator.add]


def echo_graph(saver: KVSessionsSaver) -> Any:
    """A two-node graph whose state accumulates: each run adds what it was told, twice."""
    builder = StateGraph(State)
    builder.add_node("first", lambda state: {"said": [f"first saw {len(state['said'])}"]})
    builder.add_node("second", lambda state: {"said": [f"second saw {len(state['said'])}"]})
    builder.add_edge(START, "first")
    builder.add_edge("first", "second")
    builder.add_edge("second", END)
    return builder.compile(checkpointer=saver)


async def test_a_graph_resumes_its_thread_async(integration_store: IntegrationStore) -> None:
    saver = KVSessionsSaver(integration_store.store())
    graph = echo_graph(saver)
    config = {"configurable": {"thread_id": "chat:1"}}
    await graph.ainvoke({"said": ["hello"]}, config)
    state = await graph.ainvoke({"said": ["again"]}, config)
    assert state["said"] == ["hello", "first saw 1", "second saw 2",
                             "again", "first saw 4", "second saw 5"]
    history = [item async for item in saver.alist(config)]
    steps = [item.metadata["step"] for item in history]
    assert steps == sorted(steps, reverse=True) and len(steps) == 8  # input + 3 steps, twice
    other = await graph.ainvoke({"said": ["x"]}, {"configurable": {"thread_id": "chat:2"}})
    assert other["said"] == ["x", "first saw 1", "second saw 2"]


def _said(state: list[str], writes: list[list[str]]) -> list[str]:
    return state + [item for write in writes for item in write]


class DeltaState(TypedDict):
    said: Annotated[list[str], DeltaChannel(_said, snapshot_frequency=4)]


async def test_prune_keeps_the_latest_and_what_its_delta_channels_are_rebuilt_from(
        integration_store: IntegrationStore) -> None:
    """A ``DeltaChannel`` stores a snapshot every few updates and is rebuilt by replaying the
    writes of the ancestors since: pruning them would lose the conversation."""
    saver = KVSessionsSaver(integration_store.store())
    builder = StateGraph(DeltaState)
    builder.add_node("reply", lambda state: {"said": [f"reply to {len(state['said'])}"]})
    builder.add_edge(START, "reply")
    builder.add_edge("reply", END)
    graph = builder.compile(checkpointer=saver)
    config = {"configurable": {"thread_id": "delta"}}
    other = {"configurable": {"thread_id": "other"}}
    for turn in range(5):
        said = (await graph.ainvoke({"said": [f"turn {turn}"]}, config))["said"]
    await graph.ainvoke({"said": ["elsewhere"]}, other)
    assert len(said) == 10
    before = [item async for item in saver.alist(config)]
    await saver.aprune(["delta"], strategy="keep_latest")
    after = [item async for item in saver.alist(config)]
    assert 1 < len(after) < len(before)  # the chain back to the snapshot, no more
    assert after[0].config == before[0].config
    assert (await graph.aget_state(config)).values["said"] == said
    assert (await graph.ainvoke({"said": ["turn 5"]}, config))["said"][:10] == said
    assert len([item async for item in saver.alist(other)]) == 3  # other threads untouched
    await saver.aprune(["delta", "other"], strategy="delete")
    assert await saver.aget_tuple(config) is None and await saver.aget_tuple(other) is None
    with pytest.raises(ValidationError, match="strategy"):
        await saver.aprune(["delta"], strategy="keep_oldest")


def test_a_graph_runs_through_the_sync_api_from_a_url(integration_store: IntegrationStore) -> None:
    with KVSessionsSaver(integration_store.url()) as saver:
        graph = echo_graph(saver)
        config = {"configurable": {"thread_id": "sync"}}
        graph.invoke({"said": ["a"]}, config)
        state = graph.invoke({"said": ["b"]}, config)
        assert state["said"][-3:] == ["b", "first saw 4", "second saw 5"]
        assert len(list(saver.list(config, limit=3))) == 3
        saver.delete_thread("sync")
        assert saver.get_tuple(config) is None


async def test_sync_calls_inside_a_running_loop_work_on_a_url_saver(
        integration_store: IntegrationStore) -> None:
    async with KVSessionsSaver(integration_store.url()) as saver:
        config = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
        stored = saver.put(config, empty_checkpoint(), {"source": "input", "step": -1}, {})
        found = await saver.aget_tuple(stored)
        assert found is not None and saver.get_tuple(stored) == found


async def test_a_sync_call_inside_the_loop_of_a_callers_store_says_what_to_do(
        integration_store: IntegrationStore) -> None:
    saver = KVSessionsSaver(integration_store.store())
    config = {"configurable": {"thread_id": "t"}}
    assert await saver.aget_tuple(config) is None
    with pytest.raises(StoreError, match="await the async method"):
        saver.get_tuple(config)


async def test_checkpoints_are_validated_documents_under_their_own_prefix(
        integration_store: IntegrationStore) -> None:
    store = integration_store.store()
    saver = KVSessionsSaver(SessionStorage(store))
    config = {"configurable": {"thread_id": "a:b%c", "checkpoint_ns": "sub:graph"}}
    checkpoint = empty_checkpoint()
    stored = await saver.aput(config, checkpoint, {"source": "loop", "step": 0, "note": "é"}, {})
    await saver.aput_writes(stored, [("channel", {"value": [1, 2]}), ("other", b"\x00\xff")],
                            task_id="task:1")
    keys = await store.keys()
    assert keys[0] == checkpoint_key("a:b%c", "sub:graph", checkpoint["id"])
    assert keys[0].startswith(PREFIX + "a%3Ab%25c:sub%3Agraph:")
    assert keys[1:] == [write_prefix("a:b%c", "sub:graph", checkpoint["id"]) + "task%3A1"]
    document = orjson.loads(await store.get(keys[0]) or b"")
    assert document["kind"] == "checkpoint" and document["metadata"]["note"] == "é"
    report = await validate_storage(store)
    assert report["ok"] and report["documents_checked"] == 2, report
    found = await saver.aget_tuple(stored)
    assert found is not None and found.pending_writes == [
        ("task:1", "channel", {"value": [1, 2]}), ("task:1", "other", b"\x00\xff")]
    await store.close()


async def test_metadata_that_is_not_json_is_refused_and_nothing_is_stored(
        integration_store: IntegrationStore) -> None:
    store = integration_store.store()
    saver = KVSessionsSaver(store)
    config = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
    with pytest.raises(ValidationError, match="metadata"):
        await saver.aput(config, empty_checkpoint(), {"source": "input", "x": object()}, {})
    assert await store.keys() == []
    await store.close()


def test_key_parts_keep_each_checkpoint_and_its_writes_one_key_range() -> None:
    assert key_part("1f1-ab_C.d") == "1f1-ab_C.d"  # uuids and names are their own encoding
    assert key_part("a:b%c!d e\x01") == "a%3Ab%25c%21d%20e%01"
    # Checkpoint "1" with its writes sorts wholly before (or after) checkpoint "10" and "1!":
    ones = [checkpoint_key("t", "", "1"), write_prefix("t", "", "1") + "task!0"]
    others = [checkpoint_key("t", "", other) for other in ("10", "1!", "1 ", "0", "2")]
    for other in others:
        assert all(key < other for key in ones) or all(key > other for key in ones)


async def test_latest_checkpoint_with_many_writes_and_orphan_writes(
        integration_store: IntegrationStore) -> None:
    store = integration_store.store()
    saver = KVSessionsSaver(store)
    config = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
    first = await saver.aput(config, empty_checkpoint(), {"step": 0}, {})
    await saver.aput_writes(first, [("c", i) for i in range(40)], task_id="busy")
    orphan = {"configurable": {**first["configurable"], "checkpoint_id": "never-stored"}}
    await saver.aput_writes(orphan, [("c", "lost")], task_id="x")
    found = await saver.aget_tuple(config)
    assert found is not None and found.config == first
    assert [value for _, _, value in found.pending_writes or []] == list(range(40))
    listed = [item async for item in saver.alist(None)]
    assert [item.config for item in listed] == [first]
    assert listed[0].pending_writes == found.pending_writes
    await store.close()


async def test_a_tasks_writes_are_kept_once_and_special_ones_replaced(
        integration_store: IntegrationStore) -> None:
    store = integration_store.store()
    saver = KVSessionsSaver(store)
    stored = await saver.aput({"configurable": {"thread_id": "t", "checkpoint_ns": ""}},
                              empty_checkpoint(), {}, {})
    await saver.aput_writes(stored, [("a", 1), ("b", 2)], task_id="task")
    await saver.aput_writes(stored, [("a", "again"), ("b", "again"), ("c", 3)], task_id="task")
    await saver.aput_writes(stored, [(ERROR, "first")], task_id="task")
    await saver.aput_writes(stored, [(ERROR, "second")], task_id="task")
    found = await saver.aget_tuple(stored)
    assert found is not None and found.pending_writes == [
        ("task", ERROR, "second"), ("task", "a", 1), ("task", "b", 2), ("task", "c", 3)]
    assert len(await store.keys()) == 2  # the checkpoint, and one document of the task's writes
    await store.close()


def test_kvsessions_migrate_and_validate_carry_checkpoints(
        integration_store: IntegrationStore, tmp_path: Path) -> None:
    url = integration_store.url()
    with KVSessionsSaver(url) as saver:
        graph = echo_graph(saver)
        config = {"configurable": {"thread_id": "moved"}}
        state = graph.invoke({"said": ["hi"]}, config)
    copy = f"sqlite:///{tmp_path / 'copy.db'}"
    migrated = run_kvsessions("migrate", url, copy)
    assert migrated.returncode == 0, migrated.stderr
    checked = run_kvsessions("validate", copy)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    with KVSessionsSaver(copy) as moved:
        assert echo_graph(moved).get_state(config).values == state
        assert len(list(moved.list(config))) == 4


def test_importing_kvsessions_imports_no_framework() -> None:
    code = ("import sys, kvsessions, kvsessions.integrations, kvsessions.integrations.store_loop;"
            "from kvsessions import SessionStorage;"
            "bad = [m for m in sys.modules if m.split('.')[0] in "
            "('langgraph', 'langchain_core', 'langchain', 'agents', 'google')];"
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------------- the fast read path

def _checkpoint_document() -> dict[str, Any]:
    return {"kind": "checkpoint", "v": 1, "thread_id": "t", "checkpoint_ns": "",
            "checkpoint_id": "c2", "parent_checkpoint_id": "c1",
            "checkpoint": {"type": "msgpack", "data": "AA=="}, "metadata": {"step": 1}}


def _writes_document() -> dict[str, Any]:
    return {"kind": "checkpoint_writes", "v": 1, "thread_id": "t", "checkpoint_ns": "ns",
            "checkpoint_id": "c2", "task_id": "task", "task_path": "",
            "writes": [{"idx": 0, "channel": "messages",
                        "value": {"type": "msgpack", "data": "AA=="}}]}


_SAVER_MUTATIONS: dict[str, Any] = {
    "unchanged": lambda d: None,
    "no_parent": lambda d: d.update(parent_checkpoint_id=None) if "parent_checkpoint_id" in d
    else d.update(writes=[]),
    "version_true": lambda d: d.update(v=True),
    "version_2": lambda d: d.update(v=2),
    "kind_message": lambda d: d.update(kind="message"),
    "empty_thread": lambda d: d.update(thread_id=""),
    "empty_checkpoint_id": lambda d: d.update(checkpoint_id=""),
    "namespace_none": lambda d: d.update(checkpoint_ns=None),
    "extra_field": lambda d: d.update(extra=1),
    "missing_field": lambda d: d.pop("thread_id"),
    "parent_number": lambda d: d.update(parent_checkpoint_id=7),
    "typed_extra": lambda d: (d.get("checkpoint") or d["writes"][0]["value"]).update(x=1),
    "typed_data_number": lambda d: (d.get("checkpoint") or d["writes"][0]["value"]).update(
        data=1),
    "metadata_list": lambda d: d.update(metadata=[]),
    "task_id_number": lambda d: d.update(task_id=1),
    "writes_object": lambda d: d.update(writes={}),
    "write_idx_true": lambda d: d["writes"][0].update(idx=True) if "writes" in d else None,
    "write_idx_float": lambda d: d["writes"][0].update(idx=1.0) if "writes" in d else None,
    "write_extra": lambda d: d["writes"][0].update(x=1) if "writes" in d else None,
    "write_missing": lambda d: d["writes"][0].pop("channel") if "writes" in d else None,
}


@pytest.mark.parametrize("kind", ["checkpoint", "checkpoint_writes"])
@pytest.mark.parametrize("name", sorted(_SAVER_MUTATIONS))
def test_the_fast_read_path_accepts_only_what_the_schema_accepts(kind: str, name: str) -> None:
    document = _checkpoint_document() if kind == "checkpoint" else _writes_document()
    _SAVER_MUTATIONS[name](document)
    value = orjson.dumps(document)
    documents = ValidatingStore(MemoryStore())
    try:
        validate_document(document)
        valid = True
    except ValidationError:
        valid = False
    if valid:
        assert read_saver_document(documents, "k", value) == document
    else:
        with pytest.raises(ValidationError):
            read_saver_document(documents, "k", value)
    if name in ("unchanged", "no_parent"):
        assert _is_checkpoint(document) or _is_writes(document), "what this release writes"
    elif _is_checkpoint(document) or _is_writes(document):
        assert valid, "the fast path accepted an invalid document"
