-- A cycle's jobs, read from its jobs hash (KEYS[1]); the start of the cycle's scripts
-- (beat.cycles). The hash holds either each job's JSON document (job id -> document, the
-- successors and dependency counts in their own hashes), or, for a tournament (the mesh
-- schedules), the circle method's formula, O(N) however many pairs (beat.rounds.Tournament):
--   "~t"      -> "L fixed n offset stride size": L circle positions (odd), fixed 1 when
--                position L is a node (even N; 0: odd N, a bye), n rounds of `size` pairs,
--                each round keeping its pairs offset, offset + stride, ...;
--   "~r<j>"   -> "<tournament round r> <flipped 0/1>" of the cycle's round j;
--   "~n<pos>" -> the node at circle position pos; "~k<pos>" -> a test against it (kwargs).
-- Job "r<j>p<p>" is pair p of round j; it waits for the previous job of each of its two
-- nodes. Every function below costs O(1) Redis calls (a node plays every round but its bye).
local J = KEYS[1]

local function tournament()
  local t = redis.call('HGET', J, '~t')
  if not t then return nil end
  local L, fixed, n, off, stride, size = string.match(t, '^(%d+) (%d) (%d+) (%d+) (%d+) (%d+)$')
  L = tonumber(L)
  return {L = L, half = (L + 1) / 2, fixed = fixed == '1', n = tonumber(n),
          off = tonumber(off), stride = tonumber(stride), size = tonumber(size)}
end

local function round_of(j)
  local r, flip = string.match(redis.call('HGET', J, '~r' .. j), '^(%d+) (%d)$')
  return tonumber(r), flip == '1'
end

-- job id -> round j, pair p; nil when the id is no job of this tournament
local function parse(T, id)
  local j, p = string.match(id, '^r(%d+)p(%d+)$')
  j, p = tonumber(j), tonumber(p)
  if j == nil or j >= T.n or p >= T.size then return nil end
  return j, p
end

-- the circle positions (client, server) of pair p of round j; position L is the fixed node
local function pair(T, j, p)
  local r, flip = round_of(j)
  local orig = T.off + p * T.stride
  local i = orig + 1
  if T.fixed then
    if orig == 0 then
      if (r % 2 == 0) ~= flip then return T.L, r end
      return r, T.L
    end
    i = orig
  end
  local ahead, behind = (r + i) % T.L, (r - i) % T.L
  if flip then return behind, ahead end
  return ahead, behind
end

-- the job of position x in round j, or nil (its bye, or a pair of another share)
local function slot(T, x, j)
  local r = round_of(j)
  local orig = 0
  if x ~= T.L then
    local d = (x - r) % T.L
    if d == 0 then
      if not T.fixed then return nil end
    else
      if d >= T.half then d = T.L - d end
      orig = d
      if not T.fixed then orig = d - 1 end
    end
  end
  if orig < T.off or (orig - T.off) % T.stride ~= 0 then return nil end
  return string.format('r%dp%d', j, (orig - T.off) / T.stride)
end

-- the job of position x in the nearest round after (step 1) or before (step -1) round j
local function neighbour(T, x, j, step)
  local k = j + step
  while k >= 0 and k < T.n do
    local id = slot(T, x, k)
    if id then return id end
    k = k + step
  end
  return nil
end

-- the jobs that follow job `id` on either of its nodes (step 1), or precede it (step -1)
local function around(T, id, step)
  local j, p = parse(T, id)
  local found = {}
  if j == nil then return found end
  local client, server = pair(T, j, p)
  for _, x in ipairs({client, server}) do
    local other = neighbour(T, x, j, step)
    if other and other ~= found[1] then table.insert(found, other) end
  end
  return found
end

local function node_at(pos)
  return redis.call('HGET', J, '~n' .. pos)
end

-- job id -> {JSON document, queue}; nil when no such job
local function job(T, id)
  if T == nil then
    local doc = redis.call('HGET', J, id)
    if not doc then return nil end
    return {doc, cjson.decode(doc)['queue']}
  end
  local j, p = parse(T, id)
  if j == nil then return nil end
  local client, server = pair(T, j, p)
  local queue = 'node.' .. node_at(client)
  return {'{"id":' .. cjson.encode(id) .. ',"queue":' .. cjson.encode(queue) ..
          ',"kwargs":' .. redis.call('HGET', J, '~k' .. server) .. '}', queue}
end

-- The done and sent marks: a set of job ids (documents), or a bitmap with a bit per job,
-- j * size + p (a tournament: 62 KB for a 1,000-node mesh, where a set of ids took tens of MB).
-- mark returns 1 when the job was not marked before; a tournament's unknown id is never
-- marked (nil).
local function mark(T, key, id)
  if T == nil then return redis.call('SADD', key, id) end
  local j, p = parse(T, id)
  if j == nil then return nil end
  return 1 - redis.call('SETBIT', key, j * T.size + p, 1)
end

local function marked(T, key, id)
  if T == nil then return redis.call('SISMEMBER', key, id) end
  local j, p = parse(T, id)
  if j == nil then return 0 end
  return redis.call('GETBIT', key, j * T.size + p)
end
