if redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return 0
end
if redis.call('LINDEX', KEYS[1], ARGV[3]) ~= ARGV[4] then
  return 2
end
redis.call('LSET', KEYS[1], ARGV[3], ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 1
