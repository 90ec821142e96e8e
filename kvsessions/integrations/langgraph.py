"""LangGraph's checkpointer on kvsessions: ``KVSessionsSaver``, a ``BaseCheckpointSaver``.

``pip install 'kvsessions[langgraph]'``; the one line an application changes::

    checkpointer = KVSessionsSaver("postgresql://app@db/app")   # was: SqliteSaver(conn)

Each checkpoint, and the pending writes of each of its tasks, is a versioned document of its
own (kinds ``checkpoint`` and ``checkpoint_writes``, schemas in
``kvsessions/documents/schemas/``), and a checkpoint's writes sit right after it in key order::

    langgraph:{thread}:{ns}:{checkpoint_id}             the checkpoint
    langgraph:{thread}:{ns}:{checkpoint_id}!{task_id}   the writes of one task

Every part is encoded by ``key_part``: ``%``, ``:`` and every character below ``%`` (``!``
among them) become ``%XX``. So a part holds neither ``:`` nor ``!``: a thread, a namespace, a
checkpoint with its writes are each one key range, and ranges of different checkpoints never
interleave. LangGraph's checkpoint ids sort in time order, so the latest checkpoint with its
writes is one short reverse scan (its writes come first, then it), and ``list`` is one reverse
scan from ``before`` for any ``limit``. The checkpoint is kept as LangGraph's own serializer
wrote it (type tag and bytes, base64 in the JSON); its metadata as plain JSON, as LangGraph's
SQL savers keep it, so ``filter`` compares JSON values.

Concurrent writers need nothing more: a checkpoint is one document written whole; a task's
writes are one document (one commit per ``put_writes``, as LangGraph's SQL savers make), created
by ``put_if_absent`` and otherwise merged by compare-and-set: a regular write is kept once per
index (their ``INSERT OR IGNORE``), a special one (error, interrupt, ...) replaces the one
stored (``INSERT OR REPLACE``). Migration, export and ``kvsessions validate`` see these
documents like any other.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import builtins
import re
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, cast

import orjson

from kvsessions.errors import InvalidValueError, MissingDependencyError, ValidationError
from kvsessions.integrations.checkpoint_reader import read_saver_document
from kvsessions.integrations.store_loop import StorageTarget, StoreLoop, storage_for
from kvsessions.kv.base import KVStore
from kvsessions.wrappers.validating import ValidatingStore

try:
    from langchain_core.runnables import RunnableConfig
    from langgraph.checkpoint.base import (
        WRITES_IDX_MAP,
        BaseCheckpointSaver,
        ChannelVersions,
        Checkpoint,
        CheckpointMetadata,
        CheckpointTuple,
        PendingWrite,
        get_checkpoint_id,
        get_checkpoint_metadata,
    )
    from langgraph.checkpoint.serde.base import SerializerProtocol
except ImportError as exc:  # pragma: no cover - exercised without the extra installed
    raise MissingDependencyError("langgraph-checkpoint", "langgraph",
                                 purpose="kvsessions.integrations.langgraph") from exc

__all__ = [
    "PREFIX",
    "WRITE_SEPARATOR",
    "KVSessionsSaver",
    "checkpoint_key",
    "key_part",
    "thread_prefix",
    "write_key",
    "write_prefix",
]

PREFIX = "langgraph:"
#: Between a checkpoint's key and the parts of its writes' keys; below every character an
#: encoded part holds, so a checkpoint's writes sort right after it and before any other key.
WRITE_SEPARATOR = "!"
#: Keys one ``delete_many`` (or ``put_many``) call handles while deleting or copying.
_DELETE_BATCH = 500
#: Items the first page of a "latest checkpoint" scan reads (its writes, then it).
_LATEST_PAGE = 8
_ESCAPED = re.compile(r"[\x00-\x25:]")
#: What ``prune`` may do (LangGraph's strategies).
_PRUNE_STRATEGIES = ("keep_latest", "delete")


def key_part(identifier: str) -> str:
    """``identifier`` as one part of a key (see the module docstring); ids without those
    characters (uuids, names) are their own encoding."""
    return _ESCAPED.sub(lambda match: f"%{ord(match[0]):02X}", identifier)


def thread_prefix(thread_id: str, checkpoint_ns: str | None = None) -> str:
    """The prefix of a thread's checkpoints and writes (of one namespace, when given)."""
    prefix = f"{PREFIX}{key_part(thread_id)}:"
    return prefix if checkpoint_ns is None else f"{prefix}{key_part(checkpoint_ns)}:"


def checkpoint_key(thread_id: str, checkpoint_ns: str, checkpoint_id: str) -> str:
    return thread_prefix(thread_id, checkpoint_ns) + key_part(checkpoint_id)


def write_prefix(thread_id: str, checkpoint_ns: str, checkpoint_id: str) -> str:
    """The prefix of exactly the writes of one checkpoint."""
    return checkpoint_key(thread_id, checkpoint_ns, checkpoint_id) + WRITE_SEPARATOR


def write_key(thread_id: str, checkpoint_ns: str, checkpoint_id: str, task_id: str) -> str:
    """The key of the writes ``task_id`` made for one checkpoint."""
    return write_prefix(thread_id, checkpoint_ns, checkpoint_id) + key_part(task_id)


def _is_write(key: str) -> bool:
    return WRITE_SEPARATOR in key


def _writes_of(key: str, writes: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """Those of ``writes`` (read just before checkpoint ``key`` in a reverse scan) that are
    its own, not those of a checkpoint never stored."""
    prefix = key + WRITE_SEPARATOR
    return [item for item in writes if item[0].startswith(prefix)]


def _typed(value: tuple[str, bytes]) -> dict[str, str]:
    return {"type": value[0], "data": base64.b64encode(value[1]).decode("ascii")}


def _untyped(field: dict[str, str], key: str) -> tuple[str, bytes]:
    try:
        return field["type"], base64.b64decode(field["data"], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValidationError(f"not base64: {exc}", key=key, path="data") from None


def _config(thread_id: str, checkpoint_ns: str, checkpoint_id: str) -> RunnableConfig:
    return {"configurable": {"thread_id": thread_id, "checkpoint_ns": checkpoint_ns,
                             "checkpoint_id": checkpoint_id}}


class KVSessionsSaver(BaseCheckpointSaver[str]):
    """A LangGraph checkpointer on any kvsessions store (see the module docstring).

    ``store`` is a store URL (the saver opens the store, runs it on a thread of its own and
    closes it in ``close``), a ``SessionStorage`` or a ``KVStore`` (the caller's: never
    closed here). Async and sync methods both work; sync ones also inside a running event loop
    when the saver was given a URL (see ``kvsessions.integrations.store_loop``).
    """

    def __init__(self, store: StorageTarget, *, serde: SerializerProtocol | None = None) -> None:
        super().__init__(serde=serde)
        storage, owned = storage_for(store)
        inner: KVStore = storage.store
        self._documents = (inner if isinstance(inner, ValidatingStore)
                           else ValidatingStore(inner))
        self._raw = self._documents.inner
        self._owned = owned
        self._loop = StoreLoop(own_thread=owned)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._raw!r})"

    # ------------------------------------------------------------------ lifecycle

    async def aclose(self) -> None:
        """Close the store when the saver opened it (from a URL)."""
        if self._owned:
            await self._loop.run(self._documents.close())
            self._loop.stop()

    def close(self) -> None:
        if self._owned:
            self._loop.run_sync(self._documents.close())
            self._loop.stop()

    async def __aenter__(self) -> KVSessionsSaver:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __enter__(self) -> KVSessionsSaver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ async API

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return await self._loop.run(self._get_tuple(config))

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        for item in await self._loop.run(self._list(config, filter, before, limit)):
            yield item

    async def aput(self, config: RunnableConfig, checkpoint: Checkpoint,
                   metadata: CheckpointMetadata, new_versions: ChannelVersions) -> RunnableConfig:
        return await self._loop.run(self._put(config, checkpoint, metadata))

    async def aput_writes(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]],
                          task_id: str, task_path: str = "") -> None:
        await self._loop.run(self._put_writes(config, writes, task_id, task_path))

    async def adelete_thread(self, thread_id: str) -> None:
        await self._loop.run(self._delete_thread(str(thread_id)))

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        await self._loop.run(self._delete_for_runs(run_ids))

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        await self._loop.run(self._copy_thread(str(source_thread_id), str(target_thread_id)))

    async def aprune(self, thread_ids: Sequence[str], *,
                     strategy: str = "keep_latest") -> None:
        await self._loop.run(self._prune(thread_ids, strategy))

    # ------------------------------------------------------------------ sync API

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return self._loop.run_sync(self._get_tuple(config))

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        return iter(self._loop.run_sync(self._list(config, filter, before, limit)))

    def put(self, config: RunnableConfig, checkpoint: Checkpoint,
            metadata: CheckpointMetadata, new_versions: ChannelVersions) -> RunnableConfig:
        return self._loop.run_sync(self._put(config, checkpoint, metadata))

    def put_writes(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]],
                   task_id: str, task_path: str = "") -> None:
        self._loop.run_sync(self._put_writes(config, writes, task_id, task_path))

    def delete_thread(self, thread_id: str) -> None:
        self._loop.run_sync(self._delete_thread(str(thread_id)))

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        self._loop.run_sync(self._delete_for_runs(run_ids))

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        self._loop.run_sync(self._copy_thread(str(source_thread_id), str(target_thread_id)))

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        self._loop.run_sync(self._prune(thread_ids, strategy))

    def get_next_version(self, current: str | None, channel: None) -> str:
        """Versions as LangGraph's SQL savers make them: a zero-padded counter, so text order
        is version order (``str | int`` is accepted from checkpoints of other savers)."""
        number = 0 if current is None else (
            current if isinstance(current, int) else int(str(current).split(".")[0]))
        return f"{number + 1:032}.{0:016}"

    # ------------------------------------------------------------------ work on the home loop

    async def _put(self, config: RunnableConfig, checkpoint: Checkpoint,
                   metadata: CheckpointMetadata) -> RunnableConfig:
        configurable = config["configurable"]
        thread_id = str(configurable["thread_id"])
        checkpoint_ns = str(configurable.get("checkpoint_ns", ""))
        checkpoint_id = str(checkpoint["id"])
        key = checkpoint_key(thread_id, checkpoint_ns, checkpoint_id)
        document = {
            "kind": "checkpoint", "v": 1,
            "thread_id": thread_id, "checkpoint_ns": checkpoint_ns,
            "checkpoint_id": checkpoint_id,
            "parent_checkpoint_id": configurable.get("checkpoint_id"),
            "checkpoint": _typed(self.serde.dumps_typed(checkpoint)),
            "metadata": _json_metadata(get_checkpoint_metadata(config, metadata), key),
        }
        await self._raw.put(key, self._documents.encode(key, document))
        return _config(thread_id, checkpoint_ns, checkpoint_id)

    async def _put_writes(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]],
                          task_id: str, task_path: str) -> None:
        configurable = config["configurable"]
        thread_id = str(configurable["thread_id"])
        checkpoint_ns = str(configurable.get("checkpoint_ns", ""))
        checkpoint_id = str(configurable["checkpoint_id"])
        replace = all(channel in WRITES_IDX_MAP for channel, _ in writes)
        mine: dict[int, dict[str, Any]] = {}
        for position, (channel, value) in enumerate(writes):
            idx = WRITES_IDX_MAP.get(channel, position)
            if replace or idx not in mine:
                mine[idx] = {"idx": idx, "channel": channel,
                             "value": _typed(self.serde.dumps_typed(value))}
        if not mine:
            return
        key = write_key(thread_id, checkpoint_ns, checkpoint_id, task_id)
        document = {"kind": "checkpoint_writes", "v": 1,
                    "thread_id": thread_id, "checkpoint_ns": checkpoint_ns,
                    "checkpoint_id": checkpoint_id, "task_id": task_id,
                    "task_path": task_path, "writes": sorted(mine.values(), key=_by_idx)}
        encoded = self._documents.encode(key, document)
        while not await self._raw.put_if_absent(key, encoded):
            stored = await self._raw.get(key)
            if stored is None:
                continue  # deleted meanwhile: create it again
            current = self._read(key, stored)
            merged = {write["idx"]: write for write in current["writes"]}
            for idx, write in mine.items():
                if replace or idx not in merged:  # INSERT OR REPLACE / OR IGNORE
                    merged[idx] = write
            writes_now = sorted(merged.values(), key=_by_idx)
            if writes_now == current["writes"]:
                return
            changed = self._documents.encode(key, {**current, "writes": writes_now})
            if await self._raw.compare_and_set(key, stored, changed):
                return

    async def _get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        configurable = config["configurable"]
        thread_id = str(configurable["thread_id"])
        checkpoint_ns = str(configurable.get("checkpoint_ns", ""))
        checkpoint_id = get_checkpoint_id(config)
        if checkpoint_id:
            key = checkpoint_key(thread_id, checkpoint_ns, checkpoint_id)
            value, writes = await asyncio.gather(self._raw.get(key), self._items(
                self._raw.scan(write_prefix(thread_id, checkpoint_ns, checkpoint_id))))
            return None if value is None else self._tuple(key, value, writes)
        return await self._latest(thread_prefix(thread_id, checkpoint_ns))

    async def _latest(self, prefix: str) -> CheckpointTuple | None:
        """The newest checkpoint under ``prefix`` with its writes: a reverse scan meets its
        writes first, then it; the first page is small, later ones grow."""
        writes: builtins.list[tuple[str, bytes]] = []
        cursor: str | None = None
        size = _LATEST_PAGE
        while True:
            seen = 0
            async for key, value in self._raw.scan(prefix, start_after=cursor, reverse=True,
                                                   limit=size):
                seen += 1
                cursor = key
                if not _is_write(key):
                    return self._tuple(key, value, _writes_of(key, writes))
                writes.append((key, value))
            if seen < size:
                return None  # writes of a checkpoint never stored, and nothing else
            size *= 4

    async def _list(self, config: RunnableConfig | None, filter: dict[str, Any] | None,
                    before: RunnableConfig | None,
                    limit: int | None) -> builtins.list[CheckpointTuple]:
        """Matching checkpoints, newest first, with their writes: one reverse scan. One
        thread and namespace starts at ``before`` and stops at ``limit``; wider listings
        are ordered by checkpoint id afterwards."""
        if limit is not None and limit <= 0:
            return []
        configurable = (config or {}).get("configurable", {})
        thread = configurable.get("thread_id")
        namespace = configurable.get("checkpoint_ns")
        wanted_id = configurable.get("checkpoint_id") if config else None
        before_id = get_checkpoint_id(before) if before else None
        if thread is None:
            prefix = PREFIX
        else:
            prefix = thread_prefix(str(thread), None if namespace is None else str(namespace))
        exact = thread is not None and namespace is not None
        start_after = (checkpoint_key(str(thread), str(namespace), before_id)
                       if exact and before_id else None)
        found: builtins.list[tuple[str, dict[str, Any], builtins.list[tuple[str, bytes]]]] = []
        writes: builtins.list[tuple[str, bytes]] = []
        async for key, value in self._raw.scan(prefix, start_after=start_after, reverse=True):
            if _is_write(key):
                writes.append((key, value))
                continue
            mine = _writes_of(key, writes)
            writes = []
            document = self._read(key, value)
            checkpoint_id = document["checkpoint_id"]
            if wanted_id and checkpoint_id != wanted_id:
                continue
            if before_id and checkpoint_id >= before_id:
                continue
            if filter and not all(document["metadata"].get(name) == expected
                                  for name, expected in filter.items()):
                continue
            found.append((key, document, mine))
            if exact and limit is not None and len(found) >= limit:
                break
        if not exact:
            found.sort(key=lambda item: item[1]["checkpoint_id"], reverse=True)
            if limit is not None:
                del found[limit:]
        return [self._tuple(key, document, mine) for key, document, mine in found]

    def _read(self, key: str, value: bytes) -> dict[str, Any]:
        """A stored checkpoint or task writes document, checked (``checkpoint_reader``)."""
        return read_saver_document(self._documents, key, value)

    @staticmethod
    async def _items(scan: AsyncIterator[tuple[str, bytes]]) -> builtins.list[tuple[str, bytes]]:
        return [item async for item in scan]

    def _tuple(self, key: str, stored: bytes | dict[str, Any],
               writes: builtins.list[tuple[str, bytes]]) -> CheckpointTuple:
        document = self._read(key, stored) if isinstance(stored, bytes) else stored
        thread_id = document["thread_id"]
        checkpoint_ns = document["checkpoint_ns"]
        checkpoint_id = document["checkpoint_id"]
        parent = document["parent_checkpoint_id"]
        return CheckpointTuple(
            config=_config(thread_id, checkpoint_ns, checkpoint_id),
            checkpoint=self.serde.loads_typed(_untyped(document["checkpoint"], key)),
            metadata=cast(CheckpointMetadata, document["metadata"]),
            parent_config=_config(thread_id, checkpoint_ns, parent) if parent else None,
            pending_writes=self._pending_writes(writes),
        )

    def _pending_writes(self, writes: builtins.list[tuple[str, bytes]]
                        ) -> builtins.list[PendingWrite]:
        """One checkpoint's stored writes in LangGraph's order: (task_path, task_id, idx)."""
        ordered: builtins.list[tuple[tuple[str, str, int], PendingWrite]] = []
        for key, value in writes:
            document = self._read(key, value)
            task_id, task_path = document["task_id"], document["task_path"]
            for write in document["writes"]:
                ordered.append(((task_path, task_id, write["idx"]),
                                (task_id, write["channel"],
                                 self.serde.loads_typed(_untyped(write["value"], key)))))
        ordered.sort(key=lambda item: item[0])
        return [write for _, write in ordered]

    async def _delete_thread(self, thread_id: str) -> None:
        batch: builtins.list[str] = []
        async for key, _ in self._raw.scan(thread_prefix(thread_id)):
            batch.append(key)
            if len(batch) >= _DELETE_BATCH:
                await self._raw.delete_many(batch)
                batch = []
        if batch:
            await self._raw.delete_many(batch)

    async def _delete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Remove the checkpoints whose metadata names one of ``run_ids``, with their writes:
        one forward scan of every checkpoint (no index by run), in which a checkpoint's writes
        come right after it."""
        runs = {str(run_id) for run_id in run_ids}
        if not runs:
            return
        doomed: str | None = None  # the write prefix of the checkpoint being removed
        batch: builtins.list[str] = []
        async for key, value in self._raw.scan(PREFIX):
            if _is_write(key):
                if doomed is not None and key.startswith(doomed):
                    batch.append(key)
            elif self._read(key, value)["metadata"].get("run_id") in runs:
                batch.append(key)
                doomed = key + WRITE_SEPARATOR
            else:
                doomed = None
            if len(batch) >= _DELETE_BATCH:
                await self._raw.delete_many(batch)
                batch = []
        if batch:
            await self._raw.delete_many(batch)

    async def _prune(self, thread_ids: Sequence[str], strategy: str) -> None:
        """``delete``: every checkpoint of the threads; ``keep_latest``: all but the latest
        checkpoint of each namespace and what a ``DeltaChannel`` still reads (see
        ``_prune_thread``)."""
        if strategy not in _PRUNE_STRATEGIES:
            raise InvalidValueError(f"strategy must be one of {', '.join(_PRUNE_STRATEGIES)}, "
                                    f"not {strategy!r}")
        for thread_id in dict.fromkeys(str(thread_id) for thread_id in thread_ids):
            if strategy == "delete":
                await self._delete_thread(thread_id)
            else:
                await self._prune_thread(thread_id)

    async def _prune_thread(self, thread_id: str) -> None:
        """Keep the latest checkpoint of each namespace with its writes, and the ancestors
        (with their writes) its ``DeltaChannel``s rebuild their values from: LangGraph
        counts, in the metadata key ``counters_since_delta_snapshot``, the channels whose
        snapshot lies further back; a checkpoint whose counters no longer name a channel holds
        its snapshot. So the parent chain is followed while a channel is still counted, and
        no channel value is opened. Everything else of the thread goes: one reverse scan, in
        which each namespace's newest checkpoint comes first and a checkpoint's writes come
        just before it."""
        doomed: builtins.list[str] = []
        writes: builtins.list[str] = []
        namespace: str | None = None
        wanted: str | None = None  # the next checkpoint of the kept chain
        counted: set[str] = set()  # delta channels still waiting for their snapshot
        async for key, value in self._raw.scan(thread_prefix(thread_id), reverse=True):
            if _is_write(key):
                writes.append(key)
                continue
            document = self._read(key, value)
            mine = key + WRITE_SEPARATOR
            doomed.extend(write for write in writes if not write.startswith(mine))
            if document["checkpoint_ns"] != namespace:  # the latest of its namespace
                namespace, counted = document["checkpoint_ns"], _delta_counted(document)
                keep = True
            elif document["checkpoint_id"] == wanted and counted:
                counted &= _delta_counted(document)
                keep = True
            else:
                keep = False
            if keep:
                wanted = document["parent_checkpoint_id"]
            else:
                doomed.append(key)
                doomed.extend(write for write in writes if write.startswith(mine))
            writes = []
            if len(doomed) >= _DELETE_BATCH:
                await self._raw.delete_many(doomed)
                doomed = []
        doomed.extend(writes)  # writes of no stored checkpoint
        if doomed:
            await self._raw.delete_many(doomed)

    async def _copy_thread(self, source: str, target: str) -> None:
        """Every checkpoint and write of ``source``, in every namespace, written again as
        ``target``'s (the source is left as it is)."""
        batch: builtins.list[tuple[str, bytes]] = []
        async for key, value in self._raw.scan(thread_prefix(source)):
            document = {**self._read(key, value), "thread_id": target}
            copied = _key_of(document)
            batch.append((copied, self._documents.encode(copied, document)))
            if len(batch) >= _DELETE_BATCH:
                await self._raw.put_many(batch)
                batch = []
        if batch:
            await self._raw.put_many(batch)


def _key_of(document: dict[str, Any]) -> str:
    """The key a checkpoint or a task's writes belong under, from the document's ids."""
    key = checkpoint_key(document["thread_id"], document["checkpoint_ns"],
                         document["checkpoint_id"])
    if document["kind"] == "checkpoint_writes":
        key += WRITE_SEPARATOR + key_part(document["task_id"])
    return key


def _delta_counted(document: dict[str, Any]) -> set[str]:
    """The delta channels a checkpoint's metadata counts as written since their snapshot."""
    counters = document["metadata"].get("counters_since_delta_snapshot")
    return set(counters) if isinstance(counters, dict) else set()


def _by_idx(write: dict[str, Any]) -> int:
    return int(write["idx"])


def _json_metadata(metadata: CheckpointMetadata, key: str) -> dict[str, Any]:
    """The metadata as a JSON object (LangGraph's SQL savers store it as JSON too)."""
    try:
        return cast(dict[str, Any], orjson.loads(orjson.dumps(metadata)))
    except TypeError as exc:
        raise ValidationError(f"checkpoint metadata is not JSON: {exc}", key=key,
                              path="metadata", kind="checkpoint") from None
