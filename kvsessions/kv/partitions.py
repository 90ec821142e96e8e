"""Partitions: the part of a key that groups it with other keys, for stores that shard.

The rule, the same for every key and every adapter: a key's **partition** is the text between
its first and its second ``:`` (``""`` when the key has no ``:``). The key layout
(``kvsessions.documents.keys``) puts the session id there, so ``session:{sid}``,
``message:{sid}:{mid}`` and every other per-session key share a partition, and different
sessions do not; index entries (``index:sessions:...``) share the partition of their index.
PostgreSQL can compute the same rule in SQL: ``split_part(key, ':', 2)``.

A key's **run** is the set of keys that share its text up to and including its second ``:``
(``message:{sid}:``), or, for a key with fewer than two ``:``, the key alone. A run lies in one
partition and is one contiguous range of the key order, and two runs never overlap, so a scan
over keys of many partitions is the runs it touches, visited in the order of their names, each
read in key order within its partition. Stores that shard (Redis Cluster) keep a small
directory of run names for that; stores that do not ignore all of this.
"""

from __future__ import annotations

from kvsessions.kv.values import prefix_upper_bound

__all__ = ["partition_of", "run_bounds", "run_of", "run_of_range", "single_key_run"]


def partition_of(key: str) -> str:
    """The partition of ``key``: the text between its first and second ``:``."""
    first = key.find(":")
    if first < 0:
        return ""
    second = key.find(":", first + 1)
    return key[first + 1:] if second < 0 else key[first + 1:second]


def run_of(key: str) -> str:
    """The name of ``key``'s run: ``key`` up to its second ``:`` inclusive, or ``key`` itself
    when it has fewer than two ``:`` (a run of one key)."""
    first = key.find(":")
    second = key.find(":", first + 1) if first >= 0 else -1
    return key if second < 0 else key[:second + 1]


def single_key_run(run: str) -> bool:
    """True when the run named ``run`` holds exactly the key ``run`` (fewer than two ``:``)."""
    return run.count(":") < 2


def run_bounds(run: str) -> tuple[str, str | None]:
    """The key range ``[lower, upper)`` of the run named ``run`` (upper None: unbounded)."""
    if single_key_run(run):
        return run, run + "\x00"
    return run, prefix_upper_bound(run)


def run_of_range(lower: str, upper: str | None) -> str | None:
    """The run holding every key of ``[lower, upper)``, when one run does (a scan inside one
    session's messages); None when the range may span several runs."""
    run = run_of(lower)
    if single_key_run(run) or not lower.startswith(run):
        return None
    bound = prefix_upper_bound(run)
    if upper is None:
        return run if bound is None else None
    return run if bound is None or upper <= bound else None
