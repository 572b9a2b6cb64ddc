-- Does the owner still hold every resource? (A lock that expired mid-test flags the result.)
-- KEYS: n_exclusive lock keys, then semaphore set keys. ARGV[1]: owner; ARGV[2]: n_exclusive.
-- Returns 1 when all are held, 0 otherwise.
local owner = ARGV[1]
local n_ex = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 1, n_ex do
  if redis.call('GET', KEYS[i]) ~= owner then
    return 0
  end
end
for j = n_ex + 1, #KEYS do
  local expiry = redis.call('ZSCORE', KEYS[j], owner)
  if not expiry or tonumber(expiry) <= now then
    return 0
  end
end
return 1
