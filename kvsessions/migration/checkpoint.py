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
    "claim_destination",
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


def encode_checkpoint(identity: dict[str, Any], last_key: str | None, copied: int) -> bytes:
    """The checkpoint's value; ``last_key`` None marks a migration that has begun, before its
    first batch: written first, it tells a later run that what it finds is this one's."""
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


async def claim_destination(destination: KVStore, key: str, identity: dict[str, Any]) -> None:
    """Write the checkpoint of a run that has begun and copied nothing yet (see
    ``encode_checkpoint``): before the first batch, so every document copied is claimed."""
    with reserved_keys_allowed(key):
        await destination.put(key, encode_checkpoint(identity, None, 0))


async def delete_checkpoint(destination: KVStore, key: str) -> None:
    with reserved_keys_allowed(key):
        await destination.delete(key)
