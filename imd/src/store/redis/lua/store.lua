local out = {}
local need = 0
for b = 6, #ARGV, 5 do
  local s = redis.call('HGET', KEYS[2], ARGV[b])
  if s then
    s = tonumber(s)
  else
    s = list_end(KEYS[1]) + 1
    local seq = string.format('%d', s)
    redis.call('RPUSH', KEYS[1], ARGV[b + 1] .. seq .. ARGV[b + 2])
    redis.call('HSET', KEYS[2], ARGV[b], seq)
    if KEYS[7] then
      -- The webhook outbox: a conversation's first cursor sits before its first
      -- message committed while the outbox is on.
      redis.call('HSETNX', KEYS[7], 'seq', string.format('%d', s - 1))
    end
    redis.call('RPUSH', KEYS[3], seq .. ARGV[b + 3])
    local reader = ARGV[b + 4]
    if reader == '' then
      redis.call('ZADD', KEYS[6], seq, seq)
    else
      -- The new seq is the conversation's last: past every read position.
      redis.call('HSET', KEYS[5], reader, seq)
    end
  end
  out[#out + 1] = s
  if s > need then need = s end
end
if ARGV[5] ~= '1' or need == 0 then
  return {out, {0, need, {}, {}, 0}}
end
return {out, step(KEYS[3], KEYS[4], KEYS[1], ARGV[1], ARGV[2], 0, need,
  tonumber(ARGV[3]), tonumber(ARGV[4]), 0)}
