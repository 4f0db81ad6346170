local id = redis.call('INCR', KEYS[2])
redis.call('ZADD', KEYS[1], id, string.format('%d', id) .. ' ' .. ARGV[1])
local over = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[2])
if over > 0 then
  redis.call('ZPOPMIN', KEYS[1], over)
else
  over = 0
end
return {id, over}
