local out = {}
for i = 1, #KEYS do
  local mine = ARGV[2 * i]
  local old = ARGV[2 * i + 1]
  local cur = redis.call('GET', KEYS[i])
  if (not cur) or (old ~= '' and cur == old) then
    redis.call('SET', KEYS[i], mine, 'PX', ARGV[1])
    out[i] = ''
  elseif cur == mine then
    out[i] = ''
  else
    out[i] = cur
  end
end
return out
