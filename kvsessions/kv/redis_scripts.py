"""The Lua scripts of the Redis store: each write of a value and its index members (and expiry
entries) is one script on one partition, so it is atomic on a single server and in a cluster
slot alike.

See ``kvsessions.kv.redis_layout`` for the keys the scripts keep (per partition: value keys, the
index sorted set, the expiry sorted set, the set of runs the directory holds).
"""

from __future__ import annotations

import hashlib
from typing import Any

try:
    from redis.exceptions import NoScriptError
except ImportError:  # pragma: no cover - the store refuses to start without redis
    NoScriptError = None  # type: ignore[assignment,misc]

__all__ = ["CLEAN", "COMPARE_AND_SET", "COMPARE_AND_SET_WITH", "DELETE", "PAGE", "PUT", "WRITE",
           "WRITE_MANY", "Script"]

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

# Every script that writes a value first makes sure the value's run is in the directory
# (``kvsessions.kv.redis_layout``): the partition's ``runs`` set says which runs are. A run it
# does not list makes the script return -1 (or the missing runs) without writing anything; the
# store then adds the run to the directory and runs the script again with ``confirmed`` = '1',
# which records the run. So a key is never stored while a scan over the directory could miss it.
# ``runs`` is KEYS[1] of the batch script and KEYS[4] of the others.
_REGISTERED_LUA = """
local function registered(runs_key, run, confirmed)
  if confirmed == '1' then
    redis.call('SADD', runs_key, run)
    return true
  end
  return redis.call('SISMEMBER', runs_key, run) == 1
end
"""

# The common case, lean (every argument costs the client time): KEYS: value key, index,
# (unused), runs. ARGV: value, member, run, confirmed.
_PUT_LUA = _REGISTERED_LUA + """
if not registered(KEYS[4], ARGV[3], ARGV[4]) then return -1 end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], 0, ARGV[2])
return 1
"""

# KEYS: value key, index, expiry set, runs. ARGV: value, member, px ('' = no ttl), nx ('1'),
# prefix, run, confirmed.
_WRITE_LUA = _EXPIRY_LUA + _REGISTERED_LUA + """
if not registered(KEYS[4], ARGV[6], ARGV[7]) then return -1 end
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

# put_many within one partition, all or nothing. KEYS: runs, index, expiry set, value keys...
# ARGV: px ('' = no ttl), prefix, confirmed, the number of runs, the runs..., then members...,
# then values... (in the order of the value keys). Returns the runs the directory may lack
# (nothing written), or the number of values written. MSET and ZADD in slices, within Lua's
# unpack limit.
_WRITE_MANY_LUA = _EXPIRY_LUA + _REGISTERED_LUA + """
local nruns = tonumber(ARGV[4])
local missing = {}
for i = 5, 4 + nruns do
  if not registered(KEYS[1], ARGV[i], ARGV[3]) then missing[#missing + 1] = ARGV[i] end
end
if #missing > 0 then return missing end
local first_member = 5 + nruns
local n = #KEYS - 3
local px = ARGV[1]
for first = 1, n, 500 do
  local mset, zadd = {}, {}
  for i = first, math.min(n, first + 499) do
    if px == '' then
      mset[#mset + 1] = KEYS[i + 3]
      mset[#mset + 1] = ARGV[first_member + n + i - 1]
    else
      redis.call('SET', KEYS[i + 3], ARGV[first_member + n + i - 1], 'PX', px)
    end
    zadd[#zadd + 1] = 0
    zadd[#zadd + 1] = ARGV[first_member + i - 1]
  end
  if #mset > 0 then redis.call('MSET', unpack(mset)) end
  redis.call('ZADD', KEYS[2], unpack(zadd))
end
if px ~= '' then
  local members = {}
  for i = 1, n do members[i] = ARGV[first_member + i - 1] end
  track_expiry(members, tonumber(px), ARGV[2])
end
return n
"""

# One scan page of a partition, in one round trip: the members in the page's bounds and their
# values (false for a value that is gone). KEYS: index. ARGV: min, max, limit, reverse ('1'),
# value prefix. Returns member, value, member, value... The value keys are built here: they
# share the index's hash tag, so its slot. MGET in slices, within Lua's unpack limit.
_PAGE_LUA = """
local members
if ARGV[4] == '1' then
  members = redis.call('ZREVRANGEBYLEX', KEYS[1], ARGV[2], ARGV[1], 'LIMIT', 0, ARGV[3])
else
  members = redis.call('ZRANGEBYLEX', KEYS[1], ARGV[1], ARGV[2], 'LIMIT', 0, ARGV[3])
end
local out = {}
for first = 1, #members, 500 do
  local names = {}
  for i = first, math.min(#members, first + 499) do
    names[#names + 1] = ARGV[5] .. members[i]
  end
  local values = redis.call('MGET', unpack(names))
  for i = 1, #names do
    out[#out + 1] = members[first + i - 1]
    out[#out + 1] = values[i]
  end
end
return out
"""

# KEYS: a value key, the index of a partition. ARGV: min, max (ZRANGEBYLEX form), the
# partition's value-key prefix, how many of the last members to try. Returns the value, then
# the last member in the range that has a value and that value; or the value and nothing
# when the range is empty; or the value and one false when the members tried had no value
# (expired, or gone meanwhile: the caller reads the range page by page, which cleans them).
_GET_AND_LAST_LUA = """
local value = redis.call('GET', KEYS[1])
local members = redis.call('ZREVRANGEBYLEX', KEYS[2], ARGV[2], ARGV[1], 'LIMIT', 0, ARGV[4])
for i = 1, #members do
  local item = redis.call('GET', ARGV[3] .. members[i])
  if item then
    return {value, members[i], item}
  end
end
if #members == 0 then
  return {value}
end
return {value, false}
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


# compare_and_set. KEYS: value key, index, expiry set, runs. ARGV: expected ('' = absent), new
# ('' = delete), member, px ('' = no ttl), prefix, run, confirmed. A value is a non-empty
# JSON object, so '' never stands for one. Runs as one script on one slot: nothing runs
# between GET and the write.
_COMPARE_AND_SET_LUA = _EXPIRY_LUA + _REGISTERED_LUA + """
if ARGV[2] ~= '' and not registered(KEYS[4], ARGV[6], ARGV[7]) then return -1 end
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

# compare_and_set_with, no ttl. Every key named comes with its partition's names: KEYS holds,
# per key, its value key, index, expiry set and runs set (4 each): first the compared key, then
# those created, then put, then swapped, then deleted. ARGV: expected ('' = absent), new ('' =
# delete), confirmed, how many keys are created, how many put, how many swapped, every key's
# member, every key's run, then the values created and put, then per key swapped the value it
# must hold and its new value ('' = delete). Returns 0 (a compare failed or a key to create
# was taken), 1 (all written), or the runs of written keys that the directory may lack
# (nothing written; the store adds them and runs the script again, confirmed). One script: on
# one server it may name keys of several partitions; a cluster runs it only on keys of one
# partition (one slot).
_COMPARE_AND_SET_WITH_LUA = _REGISTERED_LUA + """
local m = #KEYS / 4
local created, put, swapped = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local members, runs, values = 6, 6 + m, 5 + 2 * m
local last_put, last_swap = 1 + created + put, 1 + created + put + swapped
local function name(i, part) return KEYS[4 * (i - 1) + part] end
local function swap_arg(i, which)
  return ARGV[values + last_put + 2 * (i - last_put) - 2 + which]
end
local current = redis.call('GET', KEYS[1])
if current then
  if current ~= ARGV[1] then return 0 end
elseif ARGV[1] ~= '' then
  return 0
end
for i = 2, 1 + created do
  if redis.call('EXISTS', name(i, 1)) == 1 then return 0 end
end
for i = last_put + 1, last_swap do
  if redis.call('GET', name(i, 1)) ~= swap_arg(i, 1) then return 0 end
end
local missing = {}
local function check(i)
  if not registered(name(i, 4), ARGV[runs + i], ARGV[3]) then
    missing[#missing + 1] = ARGV[runs + i]
  end
end
if ARGV[2] ~= '' then check(1) end
for i = 2, last_put do check(i) end
for i = last_put + 1, last_swap do
  if swap_arg(i, 2) ~= '' then check(i) end
end
if #missing > 0 then return missing end
local function remove(i)
  redis.call('DEL', name(i, 1))
  redis.call('ZREM', name(i, 2), ARGV[members + i])
  redis.call('ZREM', name(i, 3), ARGV[members + i])
end
local function set(i, value)
  redis.call('SET', name(i, 1), value)
  redis.call('ZADD', name(i, 2), 0, ARGV[members + i])
end
if ARGV[2] == '' then
  if current then remove(1) end
else
  set(1, ARGV[2])
end
for i = 2, last_put do set(i, ARGV[values + i]) end
for i = last_put + 1, last_swap do
  if swap_arg(i, 2) == '' then remove(i) else set(i, swap_arg(i, 2)) end
end
for i = last_swap + 1, m do remove(i) end
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
WRITE_MANY = Script(_WRITE_MANY_LUA)
DELETE = Script(_DELETE_LUA)
CLEAN = Script(_CLEAN_LUA)
PAGE = Script(_PAGE_LUA)
GET_AND_LAST = Script(_GET_AND_LAST_LUA)
COMPARE_AND_SET = Script(_COMPARE_AND_SET_LUA)
COMPARE_AND_SET_WITH = Script(_COMPARE_AND_SET_WITH_LUA)
