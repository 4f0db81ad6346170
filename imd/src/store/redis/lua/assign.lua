local prev = redis.call('HGET', KEYS[1], ARGV[1])
if prev then
  local st = cjson.decode(prev)
  if st.open == true and type(st.agent) == 'string' then decrement(KEYS[2], st.agent) end
end
if ARGV[3] == '1' then
  redis.call('HINCRBY', KEYS[2], ARGV[4], 1)
  redis.call('ZREM', KEYS[3], ARGV[1])
else
  redis.call('ZADD', KEYS[3], 'NX', now_ms(), ARGV[1])
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
