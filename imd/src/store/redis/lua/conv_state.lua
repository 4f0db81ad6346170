local upto = tonumber(ARGV[3])
if upto == 0 then upto = redis.call('LLEN', KEYS[1]) end
local last = redis.call('LINDEX', KEYS[1], upto - 1) or ''
local mine = 0
local reads = {}
if ARGV[2] == '1' then
  reads = redis.call('HGETALL', KEYS[2])
  for i = 1, #reads, 2 do
    if reads[i] == ARGV[1] then mine = tonumber(reads[i + 1]) end
  end
else
  mine = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
end
local from = math.min(mine, upto)
local events = redis.call('ZCOUNT', KEYS[3], '(' .. string.format('%d', from),
  string.format('%d', upto))
return {upto, last, mine, reads, events}
