"""The names of a Redis namespace's keys: one hash tag per partition, and the run directory.

Layout of a namespace ``ns`` (``P`` is a key's partition, ``kvsessions.kv.partitions``)::

    kvs:{ns:P}:v:<key>   the document (a string; native PX expiry for ttl)
    kvs:{ns:P}:idx       sorted set of the partition's keys, all scores 0 (ZRANGEBYLEX: byte order)
    kvs:{ns:P}:exp       sorted set key -> expiry (ms), only for keys written with a ttl
    kvs:{ns:P}:runs      set of the partition's runs that the directory holds
    kvs:{ns}:dir         the directory: sorted set of every run name, all scores 0

Everything of one partition carries the hash tag ``{ns:P}``, so in a cluster it lives in one
slot and every write script on it is atomic there; different partitions (sessions) hash to
different slots, so they spread over every node. Only the directory, read by scans that span
partitions and written when a run gets its first key, sits in the namespace's own slot.

Earlier releases kept a whole namespace under the one tag ``{ns}`` (``kvs:{ns}:v:<key>``,
``kvs:{ns}:idx``, ``kvs:{ns}:exp``); ``LegacyNames`` names those keys for the upgrade that moves
them (``RedisStore.upgrade_layout``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

__all__ = ["LegacyNames", "PartitionNames", "directory_name", "partition_names"]


@dataclass(frozen=True, slots=True)
class PartitionNames:
    """The Redis key names of one partition of a namespace."""

    value_prefix: bytes
    index: bytes
    expiry: bytes
    runs: bytes

    def value(self, key: str) -> bytes:
        return self.value_prefix + key.encode()


@lru_cache(maxsize=8192)
def partition_names(namespace: str, partition: str) -> PartitionNames:
    """The names of ``partition`` in ``namespace`` (cached: every operation asks)."""
    tag = f"kvs:{{{namespace}:{partition}}}:".encode()
    return PartitionNames(tag + b"v:", tag + b"idx", tag + b"exp", tag + b"runs")


def directory_name(namespace: str) -> bytes:
    return f"kvs:{{{namespace}}}:dir".encode()


@dataclass(frozen=True, slots=True)
class LegacyNames:
    """The keys an earlier release kept a namespace in, all under the one hash tag ``{ns}``."""

    value_prefix: bytes
    index: bytes
    expiry: bytes

    @classmethod
    def of(cls, namespace: str) -> LegacyNames:
        tag = f"kvs:{{{namespace}}}:".encode()
        return cls(tag + b"v:", tag + b"idx", tag + b"exp")
