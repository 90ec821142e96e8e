"""CachedStore: an in-process tier and a Redis tier in front of any store, coherent across
processes. One idea a module:

- ``store.py``: ``CachedStore``, which composes the rest: reads, writes, lifecycle;
- ``local.py``: the local tier (an LRU) and the leases that keep stale copies out of it;
- ``redis_tier.py``: the Redis tier's calls (slot reads, batched fills, invalidations);
- ``protocol.py``: the invalidation protocol shared by every process: key layout, slot
  contents, channel messages and the Lua scripts;
- ``identity.py``: the Redis key prefix, which names the inner store (not only its namespace);
- ``outage.py``: the tier's named states (``TierState``), what happens when Redis goes away,
  and the watcher that brings it back.
"""

from kvsessions.wrappers.cache.outage import TierState
from kvsessions.wrappers.cache.store import CachedStore

__all__ = ["CachedStore", "TierState"]
