local now = now_ms()
for i = 1, #ARGV do
  redis.call('ZADD', KEYS[1], now, ARGV[i])
  if KEYS[2] then
    redis.call('ZADD', KEYS[2], now, ARGV[i])
  end
end
return 1
