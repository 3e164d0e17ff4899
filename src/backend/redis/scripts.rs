//! The Lua scripts, for every step that must be atomic. Each touches exactly one key, so all
//! of them run on Redis Cluster; see `FORMAT.md` for what they store.

use std::sync::LazyLock;

use redis::Script;

use crate::kind::Shape;

pub(super) fn shape_name(shape: Shape) -> &'static str {
    match shape {
        Shape::Str | Shape::Hash => "string",
        Shape::List => "list",
        Shape::Set => "set",
    }
}

// Lua helpers shared by the scripts. `\193` is the 0xC1 byte that starts every marker.
const LUA_PRELUDE: &str = r#"
local LEASE = "\193cacheobj:lease:"
local EMPTY = "\193cacheobj:empty"
local function is_lease(v) return string.sub(v, 1, #LEASE) == LEASE end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function members(k, t)
  if t == 'list' then return redis.call('LRANGE', k, 0, -1) end
  return redis.call('SMEMBERS', k)
end
local function size(k, t)
  if t == 'list' then return redis.call('LLEN', k) end
  return redis.call('SCARD', k)
end
local function add(k, t, first)
  local cmd = 'SADD'
  if t == 'list' then cmd = 'RPUSH' end
  for i = first, #ARGV, 1000 do
    redis.call(cmd, k, unpack(ARGV, i, math.min(i + 999, #ARGV)))
  end
end
"#;

macro_rules! script {
    ($name:ident, $body:expr) => {
        pub(super) static $name: LazyLock<Script> =
            LazyLock::new(|| Script::new(&format!("{}{}", LUA_PRELUDE, $body)));
    };
}

// A list or set read: {0} miss, {1} leased, {2, members} hit, {4} garbage.
// ARGV[1]: 'list' or 'set'.
script!(
    READ_COLLECTION,
    r#"
local k = KEYS[1]
local t = redis.call('TYPE', k).ok
if t == 'none' then return {0} end
if t == ARGV[1] then return {2, members(k, t)} end
if t == 'string' then
  local v = redis.call('GET', k)
  if v == EMPTY then return {2, {}} end
  if is_lease(v) then return {1} end
end
return {4}
"#
);

// Takes the fill lease of a string, list or set entry unless a value is there.
// ARGV: marker, lease ms, shape, force ('1': replace a value that did not decode).
// Returns {0} acquired, {1} leased by another, {2, value} hit.
script!(
    ACQUIRE,
    r#"
local k = KEYS[1]
local t = redis.call('TYPE', k).ok
if t == 'string' then
  local v = redis.call('GET', k)
  if is_lease(v) then return {1} end
  if ARGV[4] ~= '1' then
    if ARGV[3] == 'string' then return {2, v} end
    if v == EMPTY then return {2, {}} end
  end
elseif t == ARGV[3] and ARGV[4] ~= '1' then
  return {2, members(k, t)}
end
if t ~= 'none' then redis.call('DEL', k) end
redis.call('SET', k, ARGV[1], 'PX', ARGV[2])
return {0}
"#
);

// Stores a value if our lease marker still holds the key. ARGV: marker, ttl ms (0: none),
// shape, then the value (string) or the elements (list, set; none for an empty one).
script!(
    FILL,
    r#"
local k = KEYS[1]
if redis.call('TYPE', k).ok ~= 'string' or redis.call('GET', k) ~= ARGV[1] then return 0 end
if ARGV[3] == 'string' then
  redis.call('SET', k, ARGV[4])
else
  redis.call('DEL', k)
  if #ARGV == 3 then redis.call('SET', k, EMPTY) else add(k, ARGV[3], 4) end
end
if ARGV[2] ~= '0' then redis.call('PEXPIRE', k, ARGV[2]) end
return 1
"#
);

// Replaces a string value if it is still the one read. ARGV: expected, new, ttl ms.
script!(
    REFILL,
    r#"
local k = KEYS[1]
if redis.call('TYPE', k).ok ~= 'string' or redis.call('GET', k) ~= ARGV[1] then return 0 end
if ARGV[3] ~= '0' then redis.call('SET', k, ARGV[2], 'PX', ARGV[3]) else redis.call('SET', k, ARGV[2]) end
return 1
"#
);

// Drops our lease. ARGV: marker.
script!(
    RELEASE,
    r#"
local k = KEYS[1]
if redis.call('TYPE', k).ok == 'string' and redis.call('GET', k) == ARGV[1] then redis.call('DEL', k) end
return 1
"#
);

// Increments a cached counter; anything else (a lease, garbage) is deleted, so a load in
// flight cannot fill a count from before this change. ARGV: delta.
script!(
    INCR,
    r#"
local k = KEYS[1]
local t = redis.call('TYPE', k).ok
if t == 'none' then return false end
if t == 'string' then
  local r = redis.pcall('INCRBY', k, ARGV[1])
  if type(r) == 'number' then return r end
end
redis.call('DEL', k)
return false
"#
);

// Increments a counter, creating it with the delta (and the TTL) when it is not there.
// ARGV: delta, ttl ms.
script!(
    INCR_OR_CREATE,
    r#"
local k = KEYS[1]
local t = redis.call('TYPE', k).ok
if t == 'string' then
  local r = redis.pcall('INCRBY', k, ARGV[1])
  if type(r) == 'number' then return r end
end
if t ~= 'none' then redis.call('DEL', k) end
if ARGV[2] ~= '0' then redis.call('SET', k, ARGV[1], 'PX', ARGV[2]) else redis.call('SET', k, ARGV[1]) end
return redis.call('INCRBY', k, 0)
"#
);

// Adds elements to a cached list or set, keeping its TTL. ARGV: shape, elements...
script!(
    PUSH,
    r#"
local k = KEYS[1]
local t = redis.call('TYPE', k).ok
if t == ARGV[1] then add(k, t, 2) return size(k, t) end
if t == 'string' and redis.call('GET', k) == EMPTY then
  local ttl = redis.call('PTTL', k)
  redis.call('DEL', k)
  add(k, ARGV[1], 2)
  if ttl > 0 then redis.call('PEXPIRE', k, ttl) end
  return size(k, ARGV[1])
end
if t ~= 'none' then redis.call('DEL', k) end
return false
"#
);

// Removes elements from a cached list or set; an emptied one becomes the empty marker with the
// same TTL. ARGV: shape, elements...
script!(
    REMOVE,
    r#"
local k = KEYS[1]
local t = redis.call('TYPE', k).ok
if t == ARGV[1] then
  local ttl = redis.call('PTTL', k)
  if t == 'list' then
    for i = 2, #ARGV do redis.call('LREM', k, 0, ARGV[i]) end
  else
    for i = 2, #ARGV, 1000 do redis.call('SREM', k, unpack(ARGV, i, math.min(i + 999, #ARGV))) end
  end
  local n = size(k, t)
  if n == 0 then
    if ttl > 0 then redis.call('SET', k, EMPTY, 'PX', ttl) else redis.call('SET', k, EMPTY) end
  end
  return n
end
if t == 'string' and redis.call('GET', k) == EMPTY then return 0 end
if t ~= 'none' then redis.call('DEL', k) end
return false
"#
);

// The size of a cached list or set. ARGV: shape.
script!(
    LEN,
    r#"
local k = KEYS[1]
local t = redis.call('TYPE', k).ok
if t == ARGV[1] then return size(k, t) end
if t == 'string' and redis.call('GET', k) == EMPTY then return 0 end
return false
"#
);

// Whether a cached set holds an element. ARGV: element.
script!(
    CONTAINS,
    r#"
local k = KEYS[1]
local t = redis.call('TYPE', k).ok
if t == 'set' then return redis.call('SISMEMBER', k, ARGV[1]) end
if t == 'string' and redis.call('GET', k) == EMPTY then return 0 end
return false
"#
);

// Takes the fill lease of a hash field. A hash field has no TTL of its own, so the marker
// carries its deadline (server time). ARGV: field, token, lease ms, force.
// Returns {0} acquired, {1} leased, {2, value} hit.
script!(
    HASH_ACQUIRE,
    r#"
local k, f = KEYS[1], ARGV[1]
local t = redis.call('TYPE', k).ok
if t ~= 'hash' and t ~= 'none' then redis.call('DEL', k) end
local now = now_ms()
local v = redis.call('HGET', k, f)
if v then
  if is_lease(v) then
    local deadline = tonumber(string.sub(v, #LEASE + 1, #LEASE + 13))
    if deadline and deadline > now then return {1} end
  elseif ARGV[4] ~= '1' then
    return {2, v}
  end
end
redis.call('HSET', k, f, LEASE .. string.format('%013d', now + tonumber(ARGV[3])) .. ':' .. ARGV[2])
local pttl = redis.call('PTTL', k)
if pttl >= 0 and pttl < tonumber(ARGV[3]) then redis.call('PEXPIRE', k, ARGV[3]) end
if pttl == -1 and redis.call('HLEN', k) == 1 then redis.call('PEXPIRE', k, ARGV[3]) end
return {0}
"#
);

// Stores a hash field if our lease marker still holds it; extends the hash's TTL to at least
// the fill's. ARGV: field, token, ttl ms (0: none), value.
script!(
    HASH_FILL,
    r#"
local k, f = KEYS[1], ARGV[1]
if redis.call('TYPE', k).ok ~= 'hash' then return 0 end
local v = redis.call('HGET', k, f)
if not v or not is_lease(v) or string.sub(v, -#ARGV[2]) ~= ARGV[2] then return 0 end
redis.call('HSET', k, f, ARGV[4])
local ttl = tonumber(ARGV[3])
if ttl == 0 then
  redis.call('PERSIST', k)
else
  local pttl = redis.call('PTTL', k)
  if pttl >= 0 and pttl < ttl then redis.call('PEXPIRE', k, ttl) end
end
return 1
"#
);

// Drops our lease on a hash field. ARGV: field, token.
script!(
    HASH_RELEASE,
    r#"
local k, f = KEYS[1], ARGV[1]
if redis.call('TYPE', k).ok ~= 'hash' then return 0 end
local v = redis.call('HGET', k, f)
if v and is_lease(v) and string.sub(v, -#ARGV[2]) == ARGV[2] then redis.call('HDEL', k, f) end
return 1
"#
);
