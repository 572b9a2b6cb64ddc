-- One job of a cycle finished.
-- KEYS[1]: the cycle's remaining-jobs counter; KEYS[2]: the cycle guard; ARGV[1]: the cycle id.
-- Decrements the counter; when it reaches zero, deletes it and releases the guard if (and only
-- if) this cycle still holds it. Returns 1 when the guard was released, else 0.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local left = redis.call('DECR', KEYS[1])
if left > 0 then
  return 0
end
redis.call('DEL', KEYS[1])
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('DEL', KEYS[2])
  return 1
end
return 0
