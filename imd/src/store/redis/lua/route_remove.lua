local removed = 0
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[1])
  removed = 1
end
local left = 0
for _, node in ipairs(redis.call('HVALS', KEYS[1])) do
  if node == ARGV[2] then left = left + 1 end
end
return {removed, left}
