local prev = redis.call('HGET', KEYS[1], ARGV[1])
if prev and prev ~= ARGV[2] then
  return {prev, 0}
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return {'', list_end(KEYS[2])}
