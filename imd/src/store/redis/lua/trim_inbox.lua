local b = base_of(KEYS[1])
if b ~= tonumber(ARGV[1]) then return {-1, 0, ''} end
local n = tonumber(ARGV[2])
local len = redis.call('LLEN', KEYS[1])
if n > len then n = len end
if n > 0 then
  redis.call('LTRIM', KEYS[1], n, -1)
  redis.call('SET', KEYS[1] .. ':base', string.format('%d', b + n))
end
-- The conversations whose last message in this inbox is older than the cutoff leave
-- the list, with what a member append or a join reads of them (`pos`).
local old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[3], 'LIMIT', 0,
  tonumber(ARGV[4]))
for i = 1, #old do
  redis.call('ZREM', KEYS[2], old[i])
  redis.call('HDEL', KEYS[3], old[i])
end
local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
return {n, #old, first[2] or ''}
