local i = tonumber(ARGV[1]) - 1 - base_of(KEYS[1])
if i < 0 then return 0 end
if redis.call('LINDEX', KEYS[1], i) ~= ARGV[2] then return 0 end
redis.call('LSET', KEYS[1], i, ARGV[3])
return 1
