-- One conversation of a user's list, up to `upto` (0: the conversation's end): that
-- seq, its message, the user's position, every member's position when `all` is '1',
-- and the event messages between the user's position and that seq.
local function conv_state(msgs, read, events, uid, all, upto)
  upto = tonumber(upto)
  if upto == 0 then upto = redis.call('LLEN', msgs) end
  local last = redis.call('LINDEX', msgs, upto - 1) or ''
  local mine = 0
  local reads = {}
  if all == '1' then
    reads = redis.call('HGETALL', read)
    for i = 1, #reads, 2 do
      if reads[i] == uid then mine = tonumber(reads[i + 1]) end
    end
  else
    mine = tonumber(redis.call('HGET', read, uid) or '0')
  end
  local from = math.min(mine, upto)
  local between = redis.call('ZCOUNT', events, '(' .. string.format('%d', from),
    string.format('%d', upto))
  return {upto, last, mine, reads, between}
end
