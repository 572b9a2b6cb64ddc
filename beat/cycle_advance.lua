-- One job of a cycle finished: count it, release the jobs that were waiting only for it, and
-- end the cycle when it was the last. Idempotent per job: a job counted before changes
-- nothing, but gets back the successors it released that were never sent (the worker that
-- advanced died before sending them), so a redelivered job un-wedges its cycle.
-- Runs after beat/cycle_jobs.lua (the cycle's jobs: documents, or a tournament's formula).
-- KEYS: 1 jobs hash, 2 deps hash (id -> unfinished predecessors; documents only),
--       3 successors hash (id -> JSON list of ids; documents only), 4 remaining counter,
--       5 cycle guard, 6 done marks, 7 stats hash, 8 dispatched hash (id -> queue),
--       9 sent marks (the marks: a set or a bitmap, see beat/cycle_jobs.lua).
-- ARGV: 1 job id, 2 cycle id, 3 outcome ("ok", "failed:<reason>", ...),
--       then pairs of (node, busy seconds).
-- Returns {finished (0/1), job JSON of each job now ready ...};
--         {-1, job JSON of each released but unsent successor ...} when already counted;
--         {-2} when the cycle's keys expired or it was ended by the watchdog (a late job):
--         nothing is recreated or reported.
-- Cost: O(successors) Redis calls, whatever the cycle's size.
if redis.call('EXISTS', KEYS[1]) == 0 or tonumber(redis.call('GET', KEYS[4]) or '0') <= 0 then
  return {-2}
end
local T = tournament()

local function successors(id)
  if T then return around(T, id, 1) end
  local listed = redis.call('HGET', KEYS[3], id)
  if listed then return cjson.decode(listed) end
  return {}
end

-- predecessors of `id` not counted yet (a tournament: its nodes' previous jobs not done)
local function waiting(id)
  if T == nil then return tonumber(redis.call('HGET', KEYS[2], id) or '0') end
  local left = 0
  for _, before in ipairs(around(T, id, -1)) do
    left = left + 1 - marked(T, KEYS[6], before)
  end
  return left
end

local new = mark(T, KEYS[6], ARGV[1])
if new == nil then return {-1} end  -- no job of this tournament: nothing to count
if new == 0 then
  local pending = {-1}
  for _, id in ipairs(successors(ARGV[1])) do
    if redis.call('HEXISTS', KEYS[8], id) == 1 and marked(T, KEYS[9], id) == 0
        and waiting(id) <= 0 then
      table.insert(pending, job(T, id)[1])
    end
  end
  return pending
end
redis.call('HDEL', KEYS[8], ARGV[1])
redis.call('HINCRBY', KEYS[7], 'outcome:' .. ARGV[3], 1)
for i = 4, #ARGV - 1, 2 do
  redis.call('HINCRBYFLOAT', KEYS[7], 'busy:' .. ARGV[i], ARGV[i + 1])
end
-- The done set and the stats hash come into being here: give them the cycle's lifetime
-- (that of its jobs hash), or they would outlive it forever.
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then
  redis.call('PEXPIRE', KEYS[6], ttl)
  redis.call('PEXPIRE', KEYS[7], ttl)
end
local result = {0}
for _, id in ipairs(successors(ARGV[1])) do
  local ready
  if T then ready = waiting(id) == 0 else ready = redis.call('HINCRBY', KEYS[2], id, -1) == 0 end
  if ready then
    local found = job(T, id)
    if found then
      redis.call('HSET', KEYS[8], id, found[2])
      table.insert(result, found[1])
    end
  end
end
if redis.call('DECR', KEYS[4]) <= 0 then
  result[1] = 1
  -- Finished: the plan's bookkeeping goes now. The jobs hash (the report reads this cycle's
  -- pairs from it), stats and meta stay until the report is sent (beat.cycles.forget). A
  -- late advance finds `remaining` gone and changes nothing ({-2} above).
  redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[6], KEYS[8], KEYS[9])
  if redis.call('GET', KEYS[5]) == ARGV[2] then
    redis.call('DEL', KEYS[5])
  end
end
return result
