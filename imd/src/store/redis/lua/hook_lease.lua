local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then
  return {0, '0', '0'}
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local c = redis.call('HMGET', KEYS[2], 'seq', 'since')
return {1, c[1] or '0', c[2] or '0'}
