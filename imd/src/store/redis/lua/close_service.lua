-- KEYS[1] = service, KEYS[2] = loads; ARGV[1] = conv, ARGV[2] = waiting prefix,
-- ARGV[3] = counters prefix. Returns 1 when it was open.
local prev = redis.call('HGET', KEYS[1], ARGV[1])
if not prev then return 0 end
local st = cjson.decode(prev)
if st.open ~= true then return 0 end
if type(st.agent) == 'string' then
  decrement(KEYS[2], st.agent)
  decrement(ARGV[3] .. st.shop, 'open')
end
redis.call('ZREM', ARGV[2] .. st.shop, ARGV[1])
st.open = false
st.rated = false
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(st))
return 1
