local b = base_of(KEYS[1])
local start = tonumber(ARGV[1]) - b
if start < 0 then start = 0 end
return {b, redis.call('LRANGE', KEYS[1], start, start + tonumber(ARGV[2]) - 1)}
