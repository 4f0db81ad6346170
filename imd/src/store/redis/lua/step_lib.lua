local function seq_of(e)
  return tonumber(string.match(e, '^%d+'))
end

-- The first pending entries (at most nmax, and about `budget` member appends) and the
-- messages they name (pending is contiguous in seq).
local function read(pending, msgs, nmax, budget)
  local es = redis.call('LRANGE', pending, 0, nmax - 1)
  local total = 0
  for i = 1, #es do
    local _, c = string.gsub(es[i], '\n', '')
    total = total + c + 1
    if total >= budget then
      for j = #es, i + 1, -1 do es[j] = nil end
      break
    end
  end
  local b = base_of(msgs)
  local js = redis.call('LRANGE', msgs, seq_of(es[1]) - 1 - b, seq_of(es[#es]) - 1 - b)
  return es, js
end

-- Takes or renews the lease for `token`; false when another writer holds it.
local function hold_lease(lock, owner, token, lease)
  if owner == token then
    redis.call('PEXPIRE', lock, lease)
  elseif owner then
    return false
  else
    redis.call('SET', lock, token, 'PX', lease)
  end
  return true
end

-- Pops the entries up to `last` (0: none), then: done when the head is past `need`
-- (0: the conversation's current end), else the next round under the lease.
local function step(pending, lock, msgs, token, lease, last, need, nmax, budget, hold)
  if last > 0 then
    local h = redis.call('LINDEX', pending, 0)
    if h then
      local hs = seq_of(h)
      if hs <= last then
        redis.call('LTRIM', pending, last - hs + 1, -1)
      end
    end
  end
  if need <= 0 then
    need = list_end(msgs)
  end
  local owner = redis.call('GET', lock)
  local h = redis.call('LINDEX', pending, 0)
  local empty = 0
  if not h then empty = 1 end
  if empty == 1 or seq_of(h) > need then
    if hold == 1 then
      if not hold_lease(lock, owner, token, lease) then
        return {1, need, {}, {}, empty}
      end
      return {3, need, {}, {}, empty}
    end
    if owner == token then
      redis.call('DEL', lock)
    end
    return {0, need, {}, {}, empty}
  end
  if not hold_lease(lock, owner, token, lease) then
    return {1, need, {}, {}, empty}
  end
  local es, js = read(pending, msgs, nmax, budget)
  return {2, need, es, js, empty}
end
