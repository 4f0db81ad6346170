-- KEYS[1] = service, KEYS[2] = loads, KEYS[3] = waiting list of the shop,
-- KEYS[4] = counters of the shop; ARGV[1] = conv, ARGV[2] = shop, ARGV[3] = agent
-- ('' to wait), ARGV[4] = max_open (0: no cap), ARGV[5] = '1' to refuse out of turn.
-- Returns 0 done, 1 full, 2 out of turn (see `ShopStore::assign`).
local conv, shop, agent = ARGV[1], ARGV[2], ARGV[3]
local prev = redis.call('HGET', KEYS[1], conv)
local st = prev and cjson.decode(prev) or nil
local assigned = nil
if st and st.open == true and type(st.agent) == 'string' then assigned = st.agent end
if agent ~= '' then
  local cap = tonumber(ARGV[4])
  if cap > 0 and assigned ~= agent
     and tonumber(redis.call('HGET', KEYS[2], agent) or '0') >= cap then
    return 1
  end
  if ARGV[5] == '1' and not assigned then
    local head = redis.call('ZRANGE', KEYS[3], 0, 0)[1]
    if head and head ~= conv then return 2 end
  end
end
if assigned then decrement(KEYS[2], assigned) end
if agent ~= '' and not assigned then
  redis.call('HINCRBY', KEYS[4], 'open', 1)
elseif agent == '' and assigned then
  decrement(KEYS[4], 'open')
end
if agent ~= '' then
  redis.call('HINCRBY', KEYS[2], agent, 1)
  redis.call('ZREM', KEYS[3], conv)
else
  redis.call('ZADD', KEYS[3], 'NX', now_ms(), conv)
end
local who = cjson.null
if agent ~= '' then who = agent end
if st and st.open == true then
  st.agent = who
else
  st = { shop = shop, agent = who, open = true, since = tonumber(now_ms()),
         answered = false, rated = false }
end
redis.call('HSET', KEYS[1], conv, cjson.encode(st))
return 0
