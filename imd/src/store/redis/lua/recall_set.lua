if redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return 0
end
local i = tonumber(ARGV[3]) - 1 - base_of(KEYS[1])
if i < 0 then
  -- Retention removed it.
  return 3
end
local cur = redis.call('LINDEX', KEYS[1], i)
if cur == ARGV[5] then
  -- Set already: this is a request sent again after a lost connection.
  return 1
end
if cur ~= ARGV[4] then
  return 2
end
redis.call('LSET', KEYS[1], i, ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 1
