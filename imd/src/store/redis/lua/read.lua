local want = tonumber(ARGV[2])
local n = list_end(KEYS[1])
if want > n then want = n end
local cur = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
if want > cur then
  redis.call('HSET', KEYS[2], ARGV[1], string.format('%d', want))
  return {want, 1}
end
return {cur, 0}
