local n = tonumber(ARGV[1])
for i = 2, 2 * n, 2 do
  redis.call('ZADD', KEYS[1], 'LT', ARGV[i + 1], ARGV[i])
end
for i = 2 * n + 2, #ARGV, 2 do
  redis.call('ZADD', KEYS[2], 'LT', ARGV[i + 1], ARGV[i])
end
return 1
