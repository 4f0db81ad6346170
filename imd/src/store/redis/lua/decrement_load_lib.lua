local function decrement(loads, agent)
  if tonumber(redis.call('HGET', loads, agent) or '0') > 0 then
    redis.call('HINCRBY', loads, agent, -1)
  end
end
