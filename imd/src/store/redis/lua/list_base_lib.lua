-- Retention removes items from the head of a conversation's or an inbox's list, and
-- counts them in `<list>:base`: item i (from 1) of the list is at position base + i
-- (its seq or useq), and the next position is the list's end plus one.
local function base_of(list)
  return tonumber(redis.call('GET', list .. ':base') or '0')
end

local function list_end(list)
  return base_of(list) + redis.call('LLEN', list)
end
