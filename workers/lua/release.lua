-- Release what one owner holds (check-and-delete: another owner's lock is never touched) and
-- wake one waiter per resource.
-- KEYS: n_exclusive lock keys, then n_semaphore set keys, then one wake list per resource.
-- ARGV[1]: owner token; ARGV[2]: n_exclusive; ARGV[3]: n_semaphore.
-- Returns how many of the owner's entries were still there.
local owner = ARGV[1]
local n_ex = tonumber(ARGV[2])
local n_sem = tonumber(ARGV[3])
local released = 0
for i = 1, n_ex do
  if redis.call('GET', KEYS[i]) == owner then
    redis.call('DEL', KEYS[i])
    released = released + 1
  end
end
for j = n_ex + 1, n_ex + n_sem do
  released = released + redis.call('ZREM', KEYS[j], owner)
end
for w = n_ex + n_sem + 1, #KEYS do
  redis.call('LPUSH', KEYS[w], '1')
  redis.call('LTRIM', KEYS[w], 0, 7)
  redis.call('PEXPIRE', KEYS[w], 60000)
end
return released
