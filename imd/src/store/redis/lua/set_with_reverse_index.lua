local old = redis.call('HGET', KEYS[1], ARGV[1])
if old then
  -- A stored list, or an object with the list under `agents` (shops).
  local stored = cjson.decode(old)
  for _, a in ipairs(stored.agents or stored) do
    redis.call('SREM', ARGV[3] .. a, ARGV[1])
  end
end
for i = 4, #ARGV do
  redis.call('SADD', ARGV[3] .. ARGV[i], ARGV[1])
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
