"""The invalidation protocol every process caching one inner store in one Redis follows: the
Redis key layout, what a key's slot holds, the messages on the channel, and the Lua scripts
that change slots atomically.

Per key, Redis holds a *slot* (``v:``), a *deadline* record (``d:``, for ttl writes) and the
key's *pending writes* (``w:``, a sorted set of tokens scored by when they lapse). A slot holds
an entry ``E[deadline_ms]|document`` or a tombstone ``T<writer>.<number>`` (each tombstone is
written once, so a slot never holds the same tombstone twice); an empty slot is a miss too.

Why a reader never sees an older value after a newer one (issue 11, item 7):

* **A write marks before it writes and invalidates after.** Before the inner write, one script
  (``MARK_LUA``) replaces the slot with the write's token and adds the token to the key's
  pending writes; after it (landed or not known), one script (``INVALIDATE_LUA``) puts a fresh
  tombstone in the slot, removes the token and publishes the key. Between the two, every read
  misses and reads the inner store, which holds the old value until the commit and the new one
  after it: so once any reader has returned the new value, every later read does too.
* **A fill lands only in a quiet slot.** A reader that misses remembers what it saw in the slot
  (its *snapshot*), reads the inner store, and fills with ``FILL_LUA``, which stores the value
  only if the slot still holds the snapshot *and* the key has no pending write. Any write that
  began after the snapshot changed the slot; any write in flight at the fill is pending; a write
  in flight at the snapshot and finished since changed the slot again. So a filled value was
  the inner store's value all through the fill's window, with no write in flight: it cannot be
  older than anything a reader has returned, and the next write's mark removes it. Two readers
  that missed the same key may both queue fills; whichever arrives, neither can put back a
  value a third reader has seen replaced.
* **Marks lapse.** A writer that dies between mark and invalidation leaves its token, which
  stops fills of that key until it lapses (after the tombstone lifetime, at least 10 minutes);
  a writer stalled longer than that, like a reader stalled that long between read and fill, is
  the protocol's one window.
* **In one process**, a read that misses Redis also drops the key from the local tier and voids
  the leases of reads still in flight (``local.py``), so a Redis hit read before a write cannot
  fill the local tier after a read that already returned the newer value. Other processes drop
  their local copies when the write's message arrives: their local tiers can lag by that long.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

__all__ = [
    "CHUNK", "ENTRY", "FILL_LUA", "INVALIDATE_LUA", "MARK_LUA", "RELEASE_LUA", "TOMBSTONE",
    "TOMBSTONE_MIN_LIFE_MS",
    "CacheKeys", "Writer", "deadline_arg", "parse_entry",
]

#: Entries per Lua script call, so one huge batch does not block Redis for long.
CHUNK = 256
#: Tombstones live at least this long (ms), whatever ``redis_ttl``: a reader that stalls
#: between its read and its fill for longer could put back a value a write replaced.
TOMBSTONE_MIN_LIFE_MS = 600_000

ENTRY, TOMBSTONE = b"E", b"T"

# KEYS: (slot key, pending key) pairs. ARGV: the write's token, the token's deadline (ms),
# lifetime (ms). Before the inner write: the slot gets the token as a tombstone (no reader can
# hit the old entry any more) and the token joins the key's pending writes.
MARK_LUA = """
for i = 1, #KEYS / 2 do
  redis.call('SET', KEYS[2 * i - 1], ARGV[1], 'PX', ARGV[3])
  redis.call('ZADD', KEYS[2 * i], ARGV[2], ARGV[1])
  redis.call('PEXPIRE', KEYS[2 * i], ARGV[3])
end
return #KEYS / 2
"""

# KEYS: (slot key, deadline key, pending key) triples. ARGV: channel, message, tombstone
# lifetime (ms), now (ms), tombstone, then per entry what the write did to the deadline and
# the tokens (space separated) of its marks to remove. Deadline: '' (no ttl), 'ms' (a ttl
# ending then), '?' (unknown: keep the record), '?ms' (unknown, but no later than ms). The
# deadline record outlives the deadline by the lifetime, so a late fill still sees it passed.
INVALIDATE_LUA = """
local life = tonumber(ARGV[3])
local now = tonumber(ARGV[4])
for i = 1, #KEYS / 3 do
  local deadline = ARGV[4 + 2 * i]
  local dkey = KEYS[3 * i - 1]
  redis.call('SET', KEYS[3 * i - 2], ARGV[5], 'PX', life)
  if deadline == '' then
    redis.call('DEL', dkey)
  elseif deadline ~= '?' then
    local ms = tonumber((string.gsub(deadline, '^%?', '')))
    if string.sub(deadline, 1, 1) == '?' then
      local recorded = tonumber(redis.call('GET', dkey) or '')
      if recorded and recorded < ms then ms = recorded end
    end
    redis.call('SET', dkey, ms, 'PX', math.floor(math.max(ms - now, 0) + life))
  end
  for mark in string.gmatch(ARGV[5 + 2 * i], '%S+') do
    redis.call('ZREM', KEYS[3 * i], mark)
  end
end
if ARGV[2] ~= '' then redis.call('PUBLISH', ARGV[1], ARGV[2]) end
return #KEYS / 3
"""

# KEYS: pending keys. ARGV: the tokens (space separated) of marks to remove: a write that
# surely did not land changed nothing, so only its marks go.
RELEASE_LUA = """
for i = 1, #KEYS do
  for mark in string.gmatch(ARGV[1], '%S+') do redis.call('ZREM', KEYS[i], mark) end
end
return #KEYS
"""

# KEYS: (slot key, deadline key, pending key) triples. ARGV: entry lifetime (ms), now (ms),
# then per entry the snapshot (what the reader found in the slot: '' or a tombstone) and the
# value it read. A fill lands only if the slot still holds the snapshot and no write of the
# key is pending (marks whose deadline passed are ignored).
FILL_LUA = """
local life = tonumber(ARGV[1])
local now = tonumber(ARGV[2])
local filled = 0
for i = 1, #KEYS / 3 do
  local slot = redis.call('GET', KEYS[3 * i - 2]) or ''
  if slot == ARGV[2 * i + 1] and redis.call('ZCOUNT', KEYS[3 * i], now, '+inf') == 0 then
    local keep = life
    local deadline = redis.call('GET', KEYS[3 * i - 1]) or ''
    if deadline ~= '' then keep = math.min(keep, tonumber(deadline) - now) end
    if keep >= 1 then
      redis.call('SET', KEYS[3 * i - 2], 'E' .. deadline .. '|' .. ARGV[2 * i + 2],
                 'PX', math.floor(keep))
      filled = filled + 1
    end
  end
end
return filled
"""


def parse_entry(raw: bytes) -> tuple[bytes, float | None]:
    """An entry -> (document, deadline in s or None)."""
    header, _, document = raw.partition(b"|")
    return document, int(header[1:]) / 1000.0 if len(header) > 1 else None


def deadline_arg(deadline: float | None, *, certain: bool = True) -> str:
    """How an invalidation updates the deadline record (see ``INVALIDATE_LUA``)."""
    if deadline is None:
        return "" if certain else "?"
    return f"{'' if certain else '?'}{int(deadline * 1000)}"


class CacheKeys:
    """The Redis names of one cache (one prefix): a slot and a deadline record per key, and
    the channel its invalidations are published on."""

    __slots__ = ("channel", "deadline_prefix", "pending_prefix", "prefix", "value_prefix")

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.value_prefix = (prefix + "v:").encode()
        self.deadline_prefix = (prefix + "d:").encode()
        self.pending_prefix = (prefix + "w:").encode()
        self.channel = (prefix + "invalidate").encode()

    def slot(self, key: str) -> bytes:
        return self.value_prefix + key.encode()

    def pending(self, key: str) -> bytes:
        return self.pending_prefix + key.encode()

    def all_three(self, key: str) -> tuple[bytes, bytes, bytes]:
        """The key's slot, deadline record and pending writes."""
        encoded = key.encode()
        return (self.value_prefix + encoded, self.deadline_prefix + encoded,
                self.pending_prefix + encoded)


@dataclass(slots=True)
class Writer:
    """This process on the channel: the id that marks its messages (so it ignores its own)
    and the counter that makes each of its tombstones unique."""

    id: bytes = field(default_factory=lambda: secrets.token_hex(8).encode())
    written: int = 0

    def new_tombstone(self) -> bytes:
        self.written += 1
        return b"%s%s.%x" % (TOMBSTONE, self.id, self.written)

    def invalidation_message(self, encoded_keys: list[bytes]) -> bytes:
        """Drop these keys from your local tier."""
        return self.id + b"\x00" + b"\x00".join(encoded_keys)

    def flush_message(self) -> bytes:
        """Empty your local tier (too many writes went by unannounced)."""
        return self.id + b"\x01"

    def read_message(self, data: bytes) -> tuple[bool, list[str]] | None:
        """Another process's message as (flush everything?, keys to drop), or None for a
        message of our own."""
        if data[:len(self.id)] == self.id:
            return None
        body = data[len(self.id):]
        if body[:1] == b"\x01":
            return True, []
        return False, body[1:].decode().split("\x00")
