-- Take every resource of one test, or none (one round trip, atomic).
-- KEYS[1]: the fencing counter; KEYS[2 .. 1+n_exclusive]: exclusive locks (strings);
-- the rest: counting semaphores (sorted sets of owner -> expiry in ms).
-- ARGV[1]: owner token; ARGV[2]: TTL in ms; ARGV[3]: n_exclusive; ARGV[4 ..]: semaphore limits.
-- Returns {fence, ""} when taken, {0, key} naming the first busy resource otherwise.
local owner = ARGV[1]
local ttl = tonumber(ARGV[2])
local n_ex = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

-- A resource this owner holds already counts as free: a call re-run after a connection error
-- (redis-py re-sends it, possibly to a newly promoted master) must not find itself busy.
for i = 2, 1 + n_ex do
  local holder = redis.call('GET', KEYS[i])
  if holder and holder ~= owner then
    return {0, KEYS[i]}
  end
end
for j = 2 + n_ex, #KEYS do
  redis.call('ZREMRANGEBYSCORE', KEYS[j], '-inf', now)
  local limit = tonumber(ARGV[3 + (j - 1 - n_ex)])
  if not redis.call('ZSCORE', KEYS[j], owner) and redis.call('ZCARD', KEYS[j]) >= limit then
    return {0, KEYS[j]}
  end
end

local fence = redis.call('INCR', KEYS[1])
for i = 2, 1 + n_ex do
  redis.call('SET', KEYS[i], owner, 'PX', ttl)
end
for j = 2 + n_ex, #KEYS do
  redis.call('ZADD', KEYS[j], now + ttl, owner)
  -- The set itself outlives its longest member, never shortening another owner's entry.
  if redis.call('PTTL', KEYS[j]) < ttl then
    redis.call('PEXPIRE', KEYS[j], ttl)
  end
end
return {fence, ''}
