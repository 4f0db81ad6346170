if redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return {0, {}}
end
redis.call('PEXPIRE', KEYS[2], ARGV[2])
local from = tonumber(ARGV[3])
return {1, redis.call('LRANGE', KEYS[1], from, from + tonumber(ARGV[4]) - 1)}
