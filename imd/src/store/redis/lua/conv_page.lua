-- Byte order, as Redis orders the members of equal score (Lua's `<` follows the
-- server's locale).
local function less(a, b)
  local n = math.min(#a, #b)
  for i = 1, n do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a < #b
end

local start = 0
if ARGV[1] == '1' then
  local ts, conv = ARGV[2], ARGV[3]
  -- Ranks [lo, hi) hold the entries of the cursor's time, by member descending: find
  -- the first whose member is below the cursor's.
  local lo = redis.call('ZCOUNT', KEYS[1], '(' .. ts, '+inf')
  local hi = lo + redis.call('ZCOUNT', KEYS[1], ts, ts)
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    local m = redis.call('ZREVRANGE', KEYS[1], mid, mid)[1]
    if less(m, conv) then hi = mid else lo = mid + 1 end
  end
  start = lo
end
local page = redis.call('ZREVRANGE', KEYS[1], start, start + tonumber(ARGV[4]) - 1, 'WITHSCORES')
-- The last seq of each listed conversation in this inbox.
local have = {}
for i = 1, #page, 2 do
  have[#have + 1] = redis.call('HGET', KEYS[2], page[i]) or '0'
end
return {page, have}
