local p = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
local b = base_of(KEYS[1])
local out = {}
local ts = nil
local ts_arg = nil
for i = 2, #ARGV, 3 do
  local s = tonumber(ARGV[i])
  if s > p then
    out[#out + 1] = b + redis.call('RPUSH', KEYS[1], ARGV[i + 2])
    p = s
    local t = tonumber(ARGV[i + 1])
    if ts == nil or t > ts then
      ts = t
      ts_arg = ARGV[i + 1]
    end
  else
    out[#out + 1] = 0
  end
end
if ts then
  redis.call('HSET', KEYS[2], ARGV[1], string.format('%d', p))
  redis.call('ZADD', KEYS[3], 'GT', ts_arg, ARGV[1])
end
return out
