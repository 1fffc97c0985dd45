-- agentguard: open a pool's hash (state, or the registry of a windowed pool); create it
-- first when ARGV[1] == '1' and it does not exist. Returns {status, field, value, ...}
-- with status 'missing', 'created' or 'opened'.
-- KEYS[1] the pool's key
-- ARGV: create ('1' or '0'), now, ttl_ms, then field, value pairs written on creation
local k = KEYS[1]
if redis.call('EXISTS', k) == 0 then
  if ARGV[1] ~= '1' then
    return {'missing'}
  end
  local fields = {'c', ARGV[2]}
  for i = 4, #ARGV do fields[#fields + 1] = ARGV[i] end
  redis.call('HSET', k, unpack(fields))
  if tonumber(ARGV[3]) > 0 then
    redis.call('PEXPIRE', k, ARGV[3])
  end
  local reply = {'created'}
  for _, x in ipairs(redis.call('HGETALL', k)) do reply[#reply + 1] = x end
  return reply
end
local reply = {'opened'}
for _, x in ipairs(redis.call('HGETALL', k)) do reply[#reply + 1] = x end
return reply
