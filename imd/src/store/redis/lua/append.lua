local p = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
local out = {}
local moved = false
for i = 2, #ARGV, 2 do
  local s = tonumber(ARGV[i])
  if s > p then
    out[#out + 1] = redis.call('RPUSH', KEYS[1], ARGV[i + 1])
    p = s
    moved = true
  else
    out[#out + 1] = 0
  end
end
if moved then
  redis.call('HSET', KEYS[2], ARGV[1], string.format('%d', p))
end
return out
