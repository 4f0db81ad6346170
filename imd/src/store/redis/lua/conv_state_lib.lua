-- One conversation of a user's list, up to `upto` (0: the conversation's end): that
-- seq, its message, the user's position, every member's position when `all` is '1',
-- the event messages between the user's position and that seq, and how many messages
-- retention removed from the conversation's head.
local function conv_state(msgs, read, events, uid, all, upto)
  upto = tonumber(upto)
  if upto == 0 then upto = list_end(msgs) end
  -- Retention may have removed it (and what came before).
  local b = base_of(msgs)
  local last = ''
  if upto > b then last = redis.call('LINDEX', msgs, upto - 1 - b) or '' end
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
  -- What retention removed is unread no more.
  local from = math.max(math.min(mine, upto), b)
  local between = redis.call('ZCOUNT', events, '(' .. string.format('%d', from),
    string.format('%d', upto))
  return {upto, last, mine, reads, between, b}
end
