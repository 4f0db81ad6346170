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
local i = tonumber(s) - 1 - base_of(KEYS[2])
if i < 0 then
  -- Retention removed it: the key deduplicates no more, as if cancelled.
  return {2, ''}
end
return {0, redis.call('LINDEX', KEYS[2], i) or ''}
