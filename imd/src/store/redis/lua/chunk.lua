if redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return {0, {}, 0}
end
redis.call('PEXPIRE', KEYS[2], ARGV[2])
-- From the joiner's last seq, or from the oldest message kept when retention removed
-- what follows it.
local b = base_of(KEYS[1])
local from = tonumber(ARGV[3])
if from < b then from = b end
return {1, redis.call('LRANGE', KEYS[1], from - b, from - b + tonumber(ARGV[4]) - 1), from}
