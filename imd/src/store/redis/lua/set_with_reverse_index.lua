local old = redis.call('HGET', KEYS[1], ARGV[1])
if old then
  for _, a in ipairs(cjson.decode(old)) do
    redis.call('SREM', ARGV[3] .. a, ARGV[1])
  end
end
for i = 4, #ARGV do
  redis.call('SADD', ARGV[3] .. ARGV[i], ARGV[1])
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
