local prev = redis.call('HGET', KEYS[1], ARGV[1])
if not prev then return 0 end
local st = cjson.decode(prev)
if st.open ~= true then return 0 end
if type(st.agent) == 'string' then decrement(KEYS[2], st.agent) end
redis.call('ZREM', ARGV[2] .. st.shop, ARGV[1])
st.open = false
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(st))
return 1
