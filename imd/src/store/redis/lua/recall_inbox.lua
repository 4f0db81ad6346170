local seq = tonumber(ARGV[2])
if tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0') < seq then
  return {0, 0}
end
local top = tonumber(ARGV[3])
if top < 0 then top = redis.call('LLEN', KEYS[1]) - 1 end
if top < 0 then return {0, 0} end
local bottom = top - tonumber(ARGV[4]) + 1
if bottom < 0 then bottom = 0 end
local es = redis.call('LRANGE', KEYS[1], bottom, top)
local prefix, field, new = ARGV[5], ARGV[6], ARGV[7]
for i = #es, 1, -1 do
  local e = es[i]
  if string.sub(e, 1, #prefix) == prefix then
    if e == new then return {3, 0} end
    redis.call('LSET', KEYS[1], bottom + i - 1, new)
    return {2, 0}
  end
  -- `,"conv":` first occurs right after the id (a JSON string never holds `,"`).
  local a = string.find(e, ',"conv":', 1, true)
  if a and string.sub(e, a + 8, a + 7 + #field) == field then
    local s = tonumber(string.match(e, '^%d+', a + 8 + #field))
    if s and s < seq then return {0, 0} end
  end
end
if bottom == 0 then return {0, 0} end
return {1, bottom - 1}
