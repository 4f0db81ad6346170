if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[2], 'seq', ARGV[3], 'since', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
