local s = redis.call('HGET', KEYS[1], ARGV[1])
if not s then
  if ARGV[2] == '1' then
    redis.call('HSET', KEYS[1], ARGV[1], '0')
    return {2, ''}
  end
  return {1, ''}
end
if s == '0' then
  return {2, ''}
end
return {0, redis.call('LINDEX', KEYS[2], tonumber(s) - 1) or ''}
