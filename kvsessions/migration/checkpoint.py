"""The checkpoint that makes a migration resumable: the last key copied, kept in the destination.

It lives under the reserved key ``__kvsessions__:migrate:<hash of the prefix>``, which no user
write can reach (``kvsessions.kv.values.RESERVED_PREFIX``), so it can never overwrite a
document nor be taken for one; only this module writes it, through ``reserved_keys_allowed``.
A checkpoint belongs to one migration (its source, prefix and upgrade flag): a run of another
migration into the same destination ignores it and starts over.

A migration copied by several streams (``workers``) keeps one checkpoint per stream, the first
under that key and the others under ``<key>:<stream>``. Each says one fact: every source key
in ``(after, last_key]`` is in the destination. Such intervals never overlap, so a run resumes
by copying the gaps between them, with any number of workers (``ResumePlan``).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from kvsessions.kv.base import KVStore
from kvsessions.kv.values import RESERVED_PREFIX, reserved_keys_allowed
from kvsessions.migration.jsonl import utc_timestamp

__all__ = [
    "CHECKPOINT_PREFIX",
    "CopiedInterval",
    "Resume",
    "ResumePlan",
    "checkpoint_key",
    "claim_destination",
    "delete_checkpoint",
    "delete_checkpoints",
    "encode_checkpoint",
    "put_many_with_checkpoint",
    "read_checkpoint",
    "read_checkpoints",
    "stream_checkpoint_key",
]

logger = logging.getLogger("kvsessions.migration.checkpoint")

CHECKPOINT_PREFIX = RESERVED_PREFIX + "migrate:"


def checkpoint_key(prefix: str = "") -> str:
    """The reserved key holding the checkpoint of a migration of ``prefix``."""
    return CHECKPOINT_PREFIX + hashlib.sha256(prefix.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Resume:
    """Where a run starts: after ``last_key`` (None: from the beginning), with ``copied``
    documents copied by the runs before it. ``claimed``: this migration's checkpoint is in the
    destination, so what is there was written by an earlier run of it. ``stale``: a checkpoint
    of another migration (or one not to be resumed) is there, to be deleted before writing."""

    last_key: str | None = None
    copied: int = 0
    claimed: bool = False
    stale: bool = False


async def read_checkpoint(destination: KVStore, key: str, identity: dict[str, Any], *,
                          resume: bool) -> Resume:
    """Where to start: after this migration's checkpoint when ``resume``. Reads only: the
    caller deletes a ``stale`` checkpoint once it has decided to write."""
    with reserved_keys_allowed(key):
        stored = await destination.get(key)
    if stored is None:
        return Resume()
    state = orjson.loads(stored)
    last_key = state.get("last_key")
    ours = state.get("identity") == identity and (last_key is None or isinstance(last_key, str))
    if ours and resume:
        start = Resume(last_key, int(state.get("copied", 0)), claimed=True)
        if last_key is not None:
            logger.info("resuming the migration after %r (%d documents copied before)",
                        start.last_key, start.copied)
        return start
    if resume:
        logger.warning("ignoring a checkpoint of another migration into %r", destination)
    return Resume(claimed=ours, stale=True)


def encode_checkpoint(identity: dict[str, Any], last_key: str | None, copied: int, *,
                      after: str | None = None) -> bytes:
    """The checkpoint's value; ``last_key`` None marks a migration that has begun, before its
    first batch: written first, it tells a later run that what it finds is this one's. The
    stream copied the keys in ``(after, last_key]`` (``after`` None: from the first key)."""
    state: dict[str, Any] = {
        "kind": "migration-checkpoint", "last_key": last_key, "copied": copied,
        "identity": identity,
        "updated_at": utc_timestamp(),
    }
    if after is not None:
        state["after"] = after
    return orjson.dumps(state)


def stream_checkpoint_key(prefix: str, stream: int) -> str:
    """The checkpoint of stream number ``stream`` (0 is the single stream's own key)."""
    key = checkpoint_key(prefix)
    return key if stream == 0 else f"{key}:{stream}"


@dataclass(frozen=True, slots=True)
class CopiedInterval:
    """One stream's checkpoint: the source keys in ``(after, last_key]`` are copied."""

    stream: int
    after: str | None
    last_key: str
    copied: int


@dataclass(frozen=True, slots=True)
class ResumePlan:
    """What the checkpoints of one migration (all its streams) say, read by
    ``read_checkpoints``: ``done`` in key order; ``claimed`` and ``stale`` as in ``Resume``;
    ``stale_keys`` the checkpoints to delete before writing; ``streams`` every stream number
    in use (new streams take higher ones)."""

    done: tuple[CopiedInterval, ...] = ()
    claimed: bool = False
    stale_keys: tuple[str, ...] = ()
    streams: frozenset[int] = frozenset()

    @property
    def copied(self) -> int:
        return sum(interval.copied for interval in self.done)

    def gaps(self) -> list[tuple[str | None, str | None, CopiedInterval | None]]:
        """What is left to copy: ``(after, upto, interval)`` ranges of keys ``after < k <=
        upto`` (None: unbounded), each with the interval it continues (None: a new stream)."""
        left: list[tuple[str | None, str | None, CopiedInterval | None]] = []
        cursor: str | None = None  # the last key covered so far (None: nothing yet)
        continues: CopiedInterval | None = None
        for interval in self.done:
            if interval.after is not None and (cursor is None or cursor < interval.after):
                left.append((cursor, interval.after, continues))
            if cursor is None or interval.last_key > cursor:
                cursor, continues = interval.last_key, interval
        left.append((cursor, None, continues))
        return left


def _stream_number(key: str, base: str) -> int | None:
    if key == base:
        return 0
    tail = key[len(base) + 1:]
    return int(tail) if key.startswith(base + ":") and tail.isdigit() else None


async def read_checkpoints(destination: KVStore, prefix: str, identity: dict[str, Any], *,
                           resume: bool) -> ResumePlan:
    """Every stream checkpoint of the migration of ``prefix`` (see the module docstring).
    Reads only, in one short scan of the reserved keys."""
    base = checkpoint_key(prefix)
    done: list[CopiedInterval] = []
    stale: list[str] = []
    streams: set[int] = set()
    claimed = False
    async for key, stored in destination.scan(base):
        stream = _stream_number(key, base)
        if stream is None:
            continue
        streams.add(stream)
        state = orjson.loads(stored)
        last_key, after = state.get("last_key"), state.get("after")
        ours = (state.get("identity") == identity
                and (last_key is None or isinstance(last_key, str))
                and (after is None or isinstance(after, str)))
        if not ours or not resume:
            claimed = claimed or ours
            stale.append(key)
            continue
        claimed = True
        if last_key is not None:
            done.append(CopiedInterval(stream, after, last_key, int(state.get("copied", 0))))
    if stale and resume and not claimed:
        logger.warning("ignoring a checkpoint of another migration into %r", destination)
    done.sort(key=lambda interval: (interval.after is not None, interval.after or ""))
    if done:
        logger.info("resuming the migration: %d stream(s) had copied %d documents",
                    len(done), sum(interval.copied for interval in done))
    return ResumePlan(tuple(done), claimed, tuple(stale), frozenset(streams))


async def delete_checkpoints(destination: KVStore, keys: Iterable[str]) -> None:
    """Delete the given checkpoints, the first stream's last: while any is left, a later run
    still recognises the destination as this migration's."""
    ordered = sorted(keys, key=lambda key: (key == checkpoint_key_of(key), key))
    for key in ordered:
        await delete_checkpoint(destination, key)


def checkpoint_key_of(key: str) -> str:
    """The first stream's checkpoint key of a stream's checkpoint ``key``."""
    head, _, tail = key.rpartition(":")
    return head if tail.isdigit() and head.startswith(CHECKPOINT_PREFIX) else key


async def put_many_with_checkpoint(destination: KVStore, items: Iterable[tuple[str, bytes]],
                                   key: str) -> None:
    """``put_many`` of a batch whose items may include the checkpoint under ``key``."""
    with reserved_keys_allowed(key):
        await destination.put_many(items)


async def claim_destination(destination: KVStore, key: str, identity: dict[str, Any]) -> None:
    """Write the checkpoint of a run that has begun and copied nothing yet (see
    ``encode_checkpoint``): before the first batch, so every document copied is claimed."""
    with reserved_keys_allowed(key):
        await destination.put(key, encode_checkpoint(identity, None, 0))


async def delete_checkpoint(destination: KVStore, key: str) -> None:
    with reserved_keys_allowed(key):
        await destination.delete(key)
