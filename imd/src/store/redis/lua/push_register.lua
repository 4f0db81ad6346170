-- Sets one device's push token and keeps the user's devices within the bound: past
-- it, the devices registered longest ago go (lowest time, then device id: ZRANGE's
-- order), never the one just set. Returns the devices removed.
-- KEYS[1] = push hash, KEYS[2] = push-at zset; ARGV[1] = device, ARGV[2] = token JSON,
-- ARGV[3] = registration time (ms), ARGV[4] = the most devices kept.
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
local removed = {}
local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[4])
if over > 0 then
  -- One more than needed, in case the new device is among the oldest.
  for _, d in ipairs(redis.call('ZRANGE', KEYS[2], 0, over)) do
    if #removed == over then
      break
    end
    if d ~= ARGV[1] then
      redis.call('ZREM', KEYS[2], d)
      redis.call('HDEL', KEYS[1], d)
      removed[#removed + 1] = d
    end
  end
end
return removed
