-- agentguard: admit ('a'), settle ('s') or release ('r') on a chain of budget pools, all or
-- nothing, in one round trip. Pools are Redis hashes:
--   c created (unix s), name, warn (fraction or 0), parent (registry key of the parent pool),
--   stop (JSON of the first refusal or overrun; sticky), l:<dim> limit, s:<dim> spent,
--   r:<dim> reserved, w:<dim> (warn alert already sent).
-- A windowed pool has a registry hash (limits, last window opened) and one state hash per
-- window; the state hash of a new window is opened here, never re-opened once it vanished.
--
-- KEYS[1] the top pool's key (registry of the chain's outermost Redis pool): its
--   reservations live in KEYS[1]..':res' (id -> JSON {id, k = state keys, d = dims, i, t}),
--   their lease ends in the sorted set KEYS[1]..':lease', operation markers in
--   KEYS[1]..':op:<id>' (the reply, for idempotent retries; PX dedup).
-- KEYS[1 + i] state key of pool i (charged pool first); a window's key ends in ':w<index>'
--   and its registry is the same key without that suffix.
-- ARGV[1] "op now opid rid": op a(dmit) s(ettle) r(elease); rid '-' for none
-- ARGV[2] "dedup_ms lease_s" then per pool "ttl_ms:window" (ttl 0: keep the TTL; window
--   index or '-')
-- ARGV[3] info "route\tfunction\tpool" (for refusals and reservations)
-- ARGV[4] "dim amount reserve ..." triples
-- ARGV[5] (optional) limit bypasses: 's' (soft: a refusal does not stop the pool, the caller
--   looks for a bypass first) and indices of pools whose limits an active bypass covers
local EPS = 1e-9
local op, now, opid, rid = string.match(ARGV[1], '^(%a) (%S+) (%S+) (%S+)$')
now = tonumber(now)
if rid == '-' then rid = '' end
local dedup_ms, lease, spec = string.match(ARGV[2], '^(%d+) (%S+)(.*)$')
lease = tonumber(lease)
local info = ARGV[3]
local soft, forced = false, {}
for t in string.gmatch(ARGV[5] or '', '%S+') do
  if t == 's' then soft = true else forced[tonumber(t)] = true end
end
local np = #KEYS - 1
local wins, ttls, regs = {}, {}, {}
local n = 0
for ttl, win in string.gmatch(spec, '(%d+):(%S+)') do
  n = n + 1
  ttls[n] = tonumber(ttl)
  if win == '-' then
    wins[n] = ''
    regs[n] = KEYS[1 + n]
  else
    wins[n] = win
    regs[n] = string.sub(KEYS[1 + n], 1, -(#win + 3))
  end
end
local dims, amt, res = {}, {}, {}
local nd = 0
for d, x, y in string.gmatch(ARGV[4], '(%S+) (%S+) (%S+)') do
  nd = nd + 1
  dims[nd] = d
  amt[nd] = tonumber(x)
  res[nd] = tonumber(y)
end
local top = KEYS[1]
local opkey = top .. ':op:' .. opid
local reskey = top .. ':res'
local leasekey = top .. ':lease'

-- idempotency: the first run of an id claims its marker; a re-sent id gets the first reply
if not redis.call('SET', opkey, '1', 'NX', 'PX', dedup_ms) then
  local seen = redis.call('GET', opkey)
  if seen == '1' or not seen then
    return 'ok'
  end
  return cjson.decode(seen)
end

local function finish(reply)
  -- the common reply (ok, nothing else to say) is the bare string 'ok' and its marker stays
  -- '1': no JSON and no array to parse on the hot path
  if #reply == 4 and reply[1] == 'ok' and reply[2] == '0' and reply[3] == '0' and
      reply[4] == '0' then
    return 'ok'
  end
  redis.call('SET', opkey, cjson.encode(reply), 'PX', dedup_ms)
  return reply
end

local function unreserve(keylist, d)
  for _, k in ipairs(keylist) do
    if redis.call('EXISTS', k) == 1 then
      for m = 1, #d, 2 do
        local f = 'r:' .. d[m]
        local v = tonumber(redis.call('HINCRBYFLOAT', k, f, -tonumber(d[m + 1])))
        if v < EPS then
          redis.call('HSET', k, f, '0')
        end
      end
    end
  end
end

-- lazily reclaim reservations whose lease ran out (their worker died mid-call)
local reclaimed = {}
local due = redis.call('ZRANGEBYSCORE', leasekey, '-inf', now, 'LIMIT', 0, 64)
for _, id in ipairs(due) do
  local rec = redis.call('HGET', reskey, id)
  if rec then
    local r = cjson.decode(rec)
    unreserve(r.k, r.d)
    redis.call('HDEL', reskey, id)
    reclaimed[#reclaimed + 1] = rec
  end
  redis.call('ZREM', leasekey, id)
end

local expired = '0'
if op ~= 'a' and rid ~= '' then
  local rec = redis.call('HGET', reskey, rid)
  if rec then
    local r = cjson.decode(rec)
    unreserve(r.k, r.d)
    redis.call('HDEL', reskey, rid)
    redis.call('ZREM', leasekey, rid)
  else
    expired = '1'
  end
end
if op == 'r' then
  local reply = {'ok', expired, '0', '0'}
  for _, rec in ipairs(reclaimed) do reply[#reply + 1] = rec end
  return finish(reply)
end

local fields = {'c', 'stop', 'warn'}
for j = 1, nd do
  local d = dims[j]
  fields[#fields + 1] = 'l:' .. d
  fields[#fields + 1] = 's:' .. d
  fields[#fields + 1] = 'r:' .. d
  fields[#fields + 1] = 'w:' .. d
end
local st = {}
for i = 1, np do
  local k = KEYS[1 + i]
  local v = redis.call('HMGET', k, unpack(fields))
  if not v[1] then
    if op ~= 'a' or wins[i] == '' then
      return finish({'missing', tostring(i)})
    end
    local reg = regs[i]
    local r = redis.call('HMGET', reg, 'c', 'last')
    if not r[1] then
      return finish({'missing', tostring(i)})
    end
    if r[2] and tonumber(r[2]) >= tonumber(wins[i]) then
      return finish({'vanished', tostring(i)})
    end
    local all = redis.call('HGETALL', reg)
    local copy = {'c', tostring(now)}
    for m = 1, #all, 2 do
      local f = all[m]
      if string.sub(f, 1, 2) == 'l:' or f == 'warn' or f == 'name' or f == 'parent' then
        copy[#copy + 1] = f
        copy[#copy + 1] = all[m + 1]
      end
    end
    redis.call('HSET', k, unpack(copy))
    redis.call('HSET', reg, 'last', wins[i])
    if ttls[i] > 0 then
      redis.call('PEXPIRE', reg, ttls[i])
    end
    v = redis.call('HMGET', k, unpack(fields))
  end
  st[i] = v
end

if op == 'a' then
  for i = 1, np do
    local v = st[i]
    if v[2] then
      return finish({'stopped', tostring(i), v[2]})
    end
    for j = 1, nd do
      local o = 3 + 4 * (j - 1)
      local lim = v[o + 1]
      if lim and not forced[i] then
        lim = tonumber(lim)
        local s = tonumber(v[o + 2] or '0')
        local r = tonumber(v[o + 3] or '0')
        local need = amt[j] + res[j]
        if s + r + need > lim + EPS then
          if not soft then
            redis.call('HSET', KEYS[1 + i], 'stop', cjson.encode({
              kind = 'refused', dim = dims[j], limit = tostring(lim), spent = tostring(s),
              reserved = tostring(r), requested = tostring(need), info = info,
              at = tostring(now)}))
          end
          return finish({'refused', tostring(i), dims[j], tostring(s), tostring(r), tostring(lim)})
        end
      end
    end
  end
end

-- apply: admit charges `amt` and reserves `res`; settle charges `amt` (may overrun)
local warns, overs = {}, {}
for i = 1, np do
  local k = KEYS[1 + i]
  local v = st[i]
  local warn = tonumber(v[3] or '0')
  local stopped = v[2]
  for j = 1, nd do
    local o = 3 + 4 * (j - 1)
    local s = tonumber(v[o + 2] or '0')
    local r = tonumber(v[o + 3] or '0')
    if amt[j] ~= 0 then
      s = tonumber(redis.call('HINCRBYFLOAT', k, 's:' .. dims[j], amt[j]))
    end
    if res[j] ~= 0 then
      r = tonumber(redis.call('HINCRBYFLOAT', k, 'r:' .. dims[j], res[j]))
    elseif op == 's' then
      r = tonumber(redis.call('HGET', k, 'r:' .. dims[j]) or '0')
    end
    local lim = v[o + 1]
    if lim then
      lim = tonumber(lim)
      if op == 's' and amt[j] ~= 0 and s + r > lim + EPS then
        overs[#overs + 1] = tostring(i)
        overs[#overs + 1] = dims[j]
        overs[#overs + 1] = tostring(s)
        overs[#overs + 1] = tostring(lim)
        if not stopped then
          stopped = cjson.encode({
            kind = 'overrun', dim = dims[j], limit = tostring(lim), spent = tostring(s),
            reserved = tostring(r), requested = tostring(amt[j]), info = info,
            at = tostring(now)})
          redis.call('HSET', k, 'stop', stopped)
        end
      end
      if warn > 0 and not v[o + 4] and s + r >= lim * warn then
        redis.call('HSET', k, 'w:' .. dims[j], '1')
        warns[#warns + 1] = tostring(i)
        warns[#warns + 1] = dims[j]
        warns[#warns + 1] = tostring(s + r)
        warns[#warns + 1] = tostring(lim)
      end
    end
  end
  if ttls[i] > 0 then
    redis.call('PEXPIRE', k, ttls[i])
  end
end

if op == 'a' and rid ~= '' then
  local d = {}
  for j = 1, nd do
    if res[j] ~= 0 then
      d[#d + 1] = dims[j]
      d[#d + 1] = tostring(res[j])
    end
  end
  if #d > 0 then
    local keys = {}
    local ttl = 0
    for i = 1, np do
      keys[i] = KEYS[1 + i]
      if ttls[i] > ttl then ttl = ttls[i] end
    end
    redis.call('HSET', reskey, rid, cjson.encode({id = rid, k = keys, d = d, i = info,
      t = tostring(now)}))
    redis.call('ZADD', leasekey, now + lease, rid)
    if ttl > 0 then
      redis.call('PEXPIRE', reskey, ttl)
      redis.call('PEXPIRE', leasekey, ttl)
    end
  end
end

local reply = {'ok', expired, tostring(#warns / 4)}
for _, w in ipairs(warns) do reply[#reply + 1] = w end
reply[#reply + 1] = tostring(#overs / 4)
for _, o in ipairs(overs) do reply[#reply + 1] = o end
for _, rec in ipairs(reclaimed) do reply[#reply + 1] = rec end
return finish(reply)
