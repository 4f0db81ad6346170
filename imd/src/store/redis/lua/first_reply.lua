-- KEYS[1] = service; ARGV[1] = conv. Marks an open conversation answered; returns the
-- milliseconds since it opened, or -1 when it was answered already or is not open.
local prev = redis.call('HGET', KEYS[1], ARGV[1])
if not prev then return -1 end
local st = cjson.decode(prev)
if st.open ~= true or st.answered == true then return -1 end
st.answered = true
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(st))
local took = tonumber(now_ms()) - (tonumber(st.since) or 0)
if took < 0 then took = 0 end
return took
