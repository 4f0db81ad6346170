-- KEYS[1] = service; ARGV[1] = conv, ARGV[2] = score, ARGV[3] = counters prefix.
-- Returns 0 rated, 1 not closed, 2 already rated (see `ShopStore::rate`).
local prev = redis.call('HGET', KEYS[1], ARGV[1])
if not prev then return 1 end
local st = cjson.decode(prev)
if st.open == true then return 1 end
if st.rated == true then return 2 end
st.rated = true
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(st))
redis.call('HINCRBY', ARGV[3] .. st.shop, 'ratings', 1)
redis.call('HINCRBY', ARGV[3] .. st.shop, 'rating_sum', tonumber(ARGV[2]))
return 0
