local b = base_of(KEYS[1])
if b ~= tonumber(ARGV[1]) then return -1 end
local n = tonumber(ARGV[2])
local len = redis.call('LLEN', KEYS[1])
if n > len then n = len end
-- Never a message whose fan-out is still pending: a round reads it by its seq.
local h = redis.call('LINDEX', KEYS[3], 0)
if h then
  local room = tonumber(string.match(h, '^%d+')) - 1 - b
  if n > room then n = room end
end
if n <= 0 then return 0 end
redis.call('LTRIM', KEYS[1], n, -1)
redis.call('SET', KEYS[1] .. ':base', string.format('%d', b + n))
for i = 3, 2 + n do
  if ARGV[i] then redis.call('HDEL', KEYS[2], ARGV[i]) end
end
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', string.format('%d', b + n))
return n
