"""The invalidation protocol every process caching one inner store in one Redis follows: the
Redis key layout, what a key's slot holds, the messages on the channel, and the Lua scripts
that change slots atomically.

A key's slot holds an entry ``E[deadline_ms]|document`` or a tombstone ``T<writer>.<number>``
(each tombstone is written once, so a slot never holds the same tombstone twice); an empty
slot is a miss too. A reader that misses remembers what it saw (its *snapshot*) and fills only
if the slot still holds exactly that, so a write between its read and its fill (which always
writes a new tombstone) refuses the fill.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

__all__ = [
    "CHUNK", "ENTRY", "FILL_LUA", "INVALIDATE_LUA", "TOMBSTONE", "TOMBSTONE_MIN_LIFE_MS",
    "CacheKeys", "Writer", "deadline_arg", "parse_entry",
]

#: Entries per Lua script call, so one huge batch does not block Redis for long.
CHUNK = 256
#: Tombstones live at least this long (ms), whatever ``redis_ttl``: a reader that stalls
#: between its read and its fill for longer could put back a value a write replaced.
TOMBSTONE_MIN_LIFE_MS = 600_000

ENTRY, TOMBSTONE = b"E", b"T"

# KEYS: (slot key, deadline key) pairs. ARGV: channel, message, tombstone lifetime (ms), now
# (ms), tombstone, then per entry what the write did to the deadline: '' (no ttl), 'ms' (a ttl
# ending then), '?' (unknown: keep the record), '?ms' (unknown, but no later than ms). The
# deadline record outlives the deadline by the lifetime, so a late fill still sees it passed.
INVALIDATE_LUA = """
local life = tonumber(ARGV[3])
local now = tonumber(ARGV[4])
for i = 1, #KEYS / 2 do
  local deadline = ARGV[5 + i]
  redis.call('SET', KEYS[2 * i - 1], ARGV[5], 'PX', life)
  if deadline == '' then
    redis.call('DEL', KEYS[2 * i])
  elseif deadline ~= '?' then
    local ms = tonumber((string.gsub(deadline, '^%?', '')))
    if string.sub(deadline, 1, 1) == '?' then
      local recorded = tonumber(redis.call('GET', KEYS[2 * i]) or '')
      if recorded and recorded < ms then ms = recorded end
    end
    redis.call('SET', KEYS[2 * i], ms, 'PX', math.floor(math.max(ms - now, 0) + life))
  end
end
if ARGV[2] ~= '' then redis.call('PUBLISH', ARGV[1], ARGV[2]) end
return #KEYS / 2
"""

# KEYS: (slot key, deadline key) pairs. ARGV: entry lifetime (ms), now (ms), then per entry
# the snapshot (what the reader found in the slot: '' or a tombstone) and the value it read.
FILL_LUA = """
local life = tonumber(ARGV[1])
local now = tonumber(ARGV[2])
local filled = 0
for i = 1, #KEYS / 2 do
  local slot = redis.call('GET', KEYS[2 * i - 1]) or ''
  if slot == ARGV[2 * i + 1] then
    local keep = life
    local deadline = redis.call('GET', KEYS[2 * i]) or ''
    if deadline ~= '' then keep = math.min(keep, tonumber(deadline) - now) end
    if keep >= 1 then
      redis.call('SET', KEYS[2 * i - 1], 'E' .. deadline .. '|' .. ARGV[2 * i + 2],
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

    __slots__ = ("channel", "deadline_prefix", "prefix", "value_prefix")

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.value_prefix = (prefix + "v:").encode()
        self.deadline_prefix = (prefix + "d:").encode()
        self.channel = (prefix + "invalidate").encode()

    def slot(self, key: str) -> bytes:
        return self.value_prefix + key.encode()

    def slot_and_deadline(self, key: str) -> tuple[bytes, bytes]:
        encoded = key.encode()
        return self.value_prefix + encoded, self.deadline_prefix + encoded


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
