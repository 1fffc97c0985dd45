-- agentguard: the common charge (no reservation) on a chain of budget pools, all or nothing,
-- in one round trip and as few Redis commands as possible: one HMGET and one HSET per pool.
-- Same hash layout as charge.lua. Anything unusual is left to charge.lua: the reply 'slow'
-- means "nothing was written, send it to charge.lua" (a key is missing: a window to open or
-- a vanished pool; a reservation's lease is due for reclaim).
--
-- Idempotency: the caller sends a slot (field 'q:<process token>.<slot>') and a sequence
-- number that grows by one per charge of that slot; a slot carries one charge at a time. The
-- charged pool's hash keeps the last applied sequence of each slot, so a charge re-sent after
-- a dropped connection (same slot, same sequence) is recognised and not applied twice.
--
-- The field names come precomputed in ARGV so that each HMGET unpacks a slice of ARGV:
-- KEYS[1] the lease sorted set of the chain's top pool; KEYS[1 + i] state key of pool i
--   (charged pool first)
-- ARGV[1] info "route\tfunction\tpool", ARGV[2] nd (dimensions charged), ARGV[3] nx,
--   then nx fields "r:<dim>" of the top pool's other dimensions (any reservation there
--   means a lease may be due),
--   then the 3 + 4 nd fields: c stop warn, and per dimension l:<d> s:<d> r:<d> w:<d>,
--   then the slot field, the sequence number, now (unix s), 's' when a refusal must not
--   stop the pool (a limit bypass may exist: the caller decides) else '-', and the nd
--   amounts (the arguments before the slot field are the same for every charge of a call
--   site).
local EPS = 1e-9
local np = #KEYS - 1
local nd = tonumber(ARGV[2])
local nx = tonumber(ARGV[3])
local x0 = 4
local b0 = x0 + nx
local nf = 3 + 4 * nd
local q = b0 + nf
local seq = tonumber(ARGV[q + 1])

local st, off = {}, {}
local held = false
for i = 1, np do
  local v
  local o = 0
  if i == np then
    o = nx
    if i == 1 then
      v = redis.call('HMGET', KEYS[1 + i], unpack(ARGV, x0, q))
    else
      v = redis.call('HMGET', KEYS[1 + i], unpack(ARGV, x0, q - 1))
    end
    for j = 1, nx do
      if v[j] and tonumber(v[j]) > EPS then held = true end
    end
  elseif i == 1 then
    v = redis.call('HMGET', KEYS[1 + i], unpack(ARGV, b0, q))
  else
    v = redis.call('HMGET', KEYS[1 + i], unpack(ARGV, b0, q - 1))
  end
  if not v[o + 1] then
    return 'slow'
  end
  if i == 1 then
    local last = v[o + nf + 1]
    if last and tonumber(last) >= seq then
      return 'ok' -- a re-sent charge that was applied already
    end
  end
  for j = 1, nd do
    local r = v[o + 4 * j + 2]
    if r and tonumber(r) > EPS then held = true end
  end
  st[i] = v
  off[i] = o
end
if held and #redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[q + 2], 'LIMIT', 0, 1) > 0 then
  return 'slow'
end

for i = 1, np do
  local v = st[i]
  local o = off[i]
  if v[o + 2] then
    return {'stopped', tostring(i), v[o + 2]}
  end
  for j = 1, nd do
    local lim = v[o + 4 * j]
    if lim then
      lim = tonumber(lim)
      local s = tonumber(v[o + 4 * j + 1] or '0')
      local r = tonumber(v[o + 4 * j + 2] or '0')
      local a = tonumber(ARGV[q + 3 + j])
      if s + r + a > lim + EPS then
        local dim = string.sub(ARGV[b0 + 4 * j - 1], 3)
        if ARGV[q + 3] ~= 's' then
          redis.call('HSET', KEYS[1 + i], 'stop', cjson.encode({
            kind = 'refused', dim = dim, limit = tostring(lim), spent = tostring(s),
            reserved = tostring(r), requested = tostring(a), info = ARGV[1],
            at = ARGV[q + 2]}))
        end
        return {'refused', tostring(i), dim, tostring(s), tostring(r), tostring(lim)}
      end
    end
  end
end

local warns = nil
for i = 1, np do
  local v = st[i]
  local o = off[i]
  local w = {}
  for j = 1, nd do
    local a = tonumber(ARGV[q + 3 + j])
    if a ~= 0 then
      local s = tonumber(v[o + 4 * j + 1] or '0') + a
      w[#w + 1] = ARGV[b0 + 4 * j]
      w[#w + 1] = string.format('%.17g', s)
      local lim = v[o + 4 * j]
      if lim and v[o + 3] and not v[o + 4 * j + 3] then
        local warn = tonumber(v[o + 3])
        lim = tonumber(lim)
        local used = s + tonumber(v[o + 4 * j + 2] or '0')
        if warn > 0 and used >= lim * warn then
          w[#w + 1] = ARGV[b0 + 4 * j + 2]
          w[#w + 1] = '1'
          warns = warns or {}
          warns[#warns + 1] = tostring(i)
          warns[#warns + 1] = string.sub(ARGV[b0 + 4 * j - 1], 3)
          warns[#warns + 1] = tostring(used)
          warns[#warns + 1] = tostring(lim)
        end
      end
    end
  end
  if i == 1 then
    w[#w + 1] = ARGV[q]
    w[#w + 1] = ARGV[q + 1]
  end
  if #w > 0 then
    redis.call('HSET', KEYS[1 + i], unpack(w))
  end
end
if not warns then
  return 'ok'
end
local reply = {'ok', '0', tostring(#warns / 4)}
for _, x in ipairs(warns) do reply[#reply + 1] = x end
reply[#reply + 1] = '0'
return reply
