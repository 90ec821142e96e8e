"""The checkpoint that makes a migration resumable: the last key copied, kept in the destination.

It lives under the reserved key ``__kvsessions__:migrate:<hash of the prefix>``, which no user
write can reach (``kvsessions.kv.values.RESERVED_PREFIX``), so it can never overwrite a
document nor be taken for one; only this module writes it, through ``reserved_keys_allowed``.
A checkpoint belongs to one migration (its source, prefix and upgrade flag): a run of another
migration into the same destination ignores it and starts over.
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
    "Resume",
    "checkpoint_key",
    "delete_checkpoint",
    "encode_checkpoint",
    "put_many_with_checkpoint",
    "read_checkpoint",
]

logger = logging.getLogger("kvsessions.migration.checkpoint")

CHECKPOINT_PREFIX = RESERVED_PREFIX + "migrate:"


def checkpoint_key(prefix: str = "") -> str:
    """The reserved key holding the checkpoint of a migration of ``prefix``."""
    return CHECKPOINT_PREFIX + hashlib.sha256(prefix.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Resume:
    """Where a run starts: after ``last_key`` (None: from the beginning), with ``copied``
    documents copied by the runs before it."""

    last_key: str | None = None
    copied: int = 0


async def read_checkpoint(destination: KVStore, key: str, identity: dict[str, Any], *,
                          resume: bool, dry_run: bool) -> Resume:
    """Where to start: after this migration's checkpoint when ``resume``; a checkpoint of
    another migration (or one not wanted) is deleted, unless nothing may be written."""
    with reserved_keys_allowed(key):
        stored = await destination.get(key)
    if stored is None:
        return Resume()
    state = orjson.loads(stored)
    if resume and state.get("identity") == identity and isinstance(state.get("last_key"), str):
        start = Resume(state["last_key"], int(state.get("copied", 0)))
        logger.info("resuming the migration after %r (%d documents copied before)",
                    start.last_key, start.copied)
        return start
    if resume:
        logger.warning("ignoring a checkpoint of another migration into %r", destination)
    if not dry_run:
        await delete_checkpoint(destination, key)
    return Resume()


def encode_checkpoint(identity: dict[str, Any], last_key: str, copied: int) -> bytes:
    return orjson.dumps({
        "kind": "migration-checkpoint", "last_key": last_key, "copied": copied,
        "identity": identity,
        "updated_at": utc_timestamp(),
    })


async def put_many_with_checkpoint(destination: KVStore, items: Iterable[tuple[str, bytes]],
                                   key: str) -> None:
    """``put_many`` of a batch whose items may include the checkpoint under ``key``."""
    with reserved_keys_allowed(key):
        await destination.put_many(items)


async def delete_checkpoint(destination: KVStore, key: str) -> None:
    with reserved_keys_allowed(key):
        await destination.delete(key)
