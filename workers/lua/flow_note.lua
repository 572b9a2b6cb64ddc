-- Record one direction's outcome as its flow's latest state, for `cloud-bandwidth matrix`.
-- A result older than what the flow already holds changes nothing (results can arrive late,
-- and the result handler may see one twice while carbon is down).
-- KEYS: 1 flows hash (field "<src> <dst>" -> JSON record).
-- ARGV: 1 field, 2 start (unix s), 3 "ok" or "failed", 4 bits per second (ok) or "",
--       5 reason (failed) or "", 6 error text or "", 7 good rates kept, 8 channel to publish on,
--       9 share of the previous rates' median below which a good rate counts as low.
-- Record: t start of the latest test, s its status, r/e its reason and error when failed,
--         b/g the newest good rate and its start, h the last good rates (oldest first),
--         since: start of the first test of the current streak (same status and reason),
--         d: start of the first of the good rates in a row below that share of the median of
--            the rates before each (absent while the flow measures at its usual rate).
-- Returns 1 when recorded, 0 when older than the stored state.
local raw = redis.call('HGET', KEYS[1], ARGV[1])
local rec = {}
if raw then
  rec = cjson.decode(raw)
end
local start = tonumber(ARGV[2])
if rec['t'] and tonumber(rec['t']) >= start then
  return 0
end
if rec['s'] ~= ARGV[3] or (rec['r'] or '') ~= ARGV[5] or not rec['since'] then
  rec['since'] = start
end
rec['t'] = start
rec['s'] = ARGV[3]
if ARGV[3] == 'ok' then
  rec['r'] = nil
  rec['e'] = nil
  local bps = tonumber(ARGV[4])
  rec['b'] = bps
  rec['g'] = start
  local history = rec['h']
  if type(history) ~= 'table' then
    history = {}
  end
  if #history > 0 then
    local sorted = {}
    for i, v in ipairs(history) do
      sorted[i] = v
    end
    table.sort(sorted)
    local n = #sorted
    local median = sorted[math.floor((n + 1) / 2)]
    if n % 2 == 0 then
      median = (sorted[n / 2] + sorted[n / 2 + 1]) / 2
    end
    if bps < tonumber(ARGV[9]) * median then
      rec['d'] = rec['d'] or start
    else
      rec['d'] = nil
    end
  end
  table.insert(history, bps)
  while #history > tonumber(ARGV[7]) do
    table.remove(history, 1)
  end
  rec['h'] = history
else
  rec['r'] = ARGV[5]
  rec['e'] = ARGV[6]
end
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(rec))
redis.call('PUBLISH', ARGV[8], ARGV[1])
return 1
