"""The Lua scripts of the Redis store: each write of a value and its index members (and expiry
entries) is one script, so it is atomic on a single server and in a cluster slot alike.

See ``kvsessions.kv.redis`` for the layout the scripts keep (value keys, the index sorted set,
the expiry sorted set, all under one hash tag).
"""

from __future__ import annotations

import hashlib
from typing import Any

try:
    from redis.exceptions import NoScriptError
except ImportError:  # pragma: no cover - the store refuses to start without redis
    NoScriptError = None  # type: ignore[assignment,misc]

__all__ = ["CLEAN", "COMPARE_AND_SET", "DELETE", "PUT", "PUT_MANY", "WRITE", "WRITE_MANY_TTL",
           "Script"]

#: Index members past their expiry that one ttl write removes (keeps the index bounded).
_SWEEP_PER_WRITE = 16

# Shared by the write scripts: record a ttl key's expiry, then sweep a few due members.
# KEYS[2] = index, KEYS[3] = expiry set; px = ttl in ms; prefix = the value-key prefix.
# The swept value keys are built in the script; they share the hash tag, so the slot.
_EXPIRY_LUA = """
local function track_expiry(members, px, prefix)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  for i = 1, #members do
    redis.call('ZADD', KEYS[3], now + px, members[i])
  end
  local due = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, SWEEP)
  for _, member in ipairs(due) do
    if redis.call('EXISTS', prefix .. member) == 0 then
      redis.call('ZREM', KEYS[2], member)
    end
    redis.call('ZREM', KEYS[3], member)
  end
end
""".replace("SWEEP", str(_SWEEP_PER_WRITE))

# The common case, lean (every argument costs the client time): KEYS: value key, index.
# ARGV: value, member.
_PUT_LUA = """
redis.call('SET', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], 0, ARGV[2])
return 1
"""

# KEYS: value key, index, expiry set. ARGV: value, member, px ('' = no ttl), nx ('1'), prefix.
_WRITE_LUA = _EXPIRY_LUA + """
local command = {'SET', KEYS[1], ARGV[1]}
if ARGV[4] == '1' then command[#command + 1] = 'NX' end
if ARGV[3] ~= '' then
  command[#command + 1] = 'PX'
  command[#command + 1] = ARGV[3]
end
if not redis.call(unpack(command)) then return 0 end
redis.call('ZADD', KEYS[2], 0, ARGV[2])
if ARGV[3] ~= '' then track_expiry({ARGV[2]}, tonumber(ARGV[3]), ARGV[5]) end
return 1
"""

# KEYS: (index again, unused), index, expiry set, value keys...
# ARGV: px, prefix, then member, value pairs.
_WRITE_MANY_TTL_LUA = _EXPIRY_LUA + """
local px = tonumber(ARGV[1])
local members = {}
for i = 4, #KEYS do
  local member = ARGV[2 * (i - 4) + 3]
  redis.call('SET', KEYS[i], ARGV[2 * (i - 4) + 4], 'PX', px)
  redis.call('ZADD', KEYS[2], 0, member)
  members[#members + 1] = member
end
track_expiry(members, px, ARGV[2])
return #members
"""

# put_many on Redis Cluster, where redis-py's transaction pipeline is slow (it queues each
# command through a new thread and event loop). KEYS: index, value keys...; ARGV: members...,
# then values... (same order). MSET and ZADD in slices, within Lua's unpack limit.
_PUT_MANY_LUA = """
local n = #ARGV / 2
for first = 1, n, 500 do
  local mset, zadd = {}, {}
  for i = first, math.min(n, first + 499) do
    mset[#mset + 1] = KEYS[i + 1]
    mset[#mset + 1] = ARGV[n + i]
    zadd[#zadd + 1] = 0
    zadd[#zadd + 1] = ARGV[i]
  end
  redis.call('MSET', unpack(mset))
  redis.call('ZADD', KEYS[1], unpack(zadd))
end
return n
"""

# KEYS: index, expiry set, value keys... ARGV: members. Deletes values, members and expiry
# entries; returns how many values existed.
_DELETE_LUA = """
local deleted = 0
for i = 3, #KEYS do
  deleted = deleted + redis.call('DEL', KEYS[i])
  redis.call('ZREM', KEYS[1], ARGV[i - 2])
  redis.call('ZREM', KEYS[2], ARGV[i - 2])
end
return deleted
"""

# KEYS: index, value keys... ARGV: members. Un-indexes a member only if its value is gone now;
# returns the members whose value key holds another Redis type (MGET reads those as nil).
_CLEAN_LUA = """
local foreign = {}
for i = 2, #KEYS do
  local kind = redis.call('TYPE', KEYS[i])['ok']
  if kind == 'none' then
    redis.call('ZREM', KEYS[1], ARGV[i - 1])
  elseif kind ~= 'string' then
    foreign[#foreign + 1] = ARGV[i - 1]
  end
end
return foreign
"""


# compare_and_set. KEYS: value key, index, expiry set. ARGV: expected ('' = absent), new
# ('' = delete), member, px ('' = no ttl), prefix. A value is a non-empty JSON object, so ''
# never stands for one. Runs as one script on one slot: nothing runs between GET and the write.
_COMPARE_AND_SET_LUA = _EXPIRY_LUA + """
local current = redis.call('GET', KEYS[1])
if current then
  if current ~= ARGV[1] then return 0 end
elseif ARGV[1] ~= '' then
  return 0
end
if ARGV[2] == '' then
  if current then
    redis.call('DEL', KEYS[1])
    redis.call('ZREM', KEYS[2], ARGV[3])
    redis.call('ZREM', KEYS[3], ARGV[3])
  end
  return 1
end
if ARGV[4] == '' then
  redis.call('SET', KEYS[1], ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[4])
end
redis.call('ZADD', KEYS[2], 0, ARGV[3])
if ARGV[4] ~= '' then track_expiry({ARGV[3]}, tonumber(ARGV[4]), ARGV[5]) end
return 1
"""


class Script:
    """A Lua script run by EVALSHA, falling back to EVAL (which caches it) after a restart."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()

    async def __call__(self, client: Any, keys: list[bytes], args: list[Any]) -> Any:
        try:
            return await client.execute_command("EVALSHA", self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await client.execute_command("EVAL", self.source, len(keys), *keys, *args)


PUT = Script(_PUT_LUA)
WRITE = Script(_WRITE_LUA)
WRITE_MANY_TTL = Script(_WRITE_MANY_TTL_LUA)
PUT_MANY = Script(_PUT_MANY_LUA)
DELETE = Script(_DELETE_LUA)
CLEAN = Script(_CLEAN_LUA)
COMPARE_AND_SET = Script(_COMPARE_AND_SET_LUA)
