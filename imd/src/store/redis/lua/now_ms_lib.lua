-- now_ms(): the Redis server's clock (the one clock every node shares), unix
-- milliseconds as a string of digits.
local function now_ms()
  local t = redis.call('TIME')
  return t[1] .. string.format('%03d', math.floor(tonumber(t[2]) / 1000))
end
