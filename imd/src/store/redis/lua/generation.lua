-- The generation check (see `generation.rs`). KEYS[1] = this process's write clock,
-- KEYS[2] = the generation; ARGV[1] = the highest clock value this process saw,
-- ARGV[2] = the generation it knows ('' for none), ARGV[3] = the clock's lifetime (ms), ARGV[4] = a random suffix for a new generation.
-- Returns {clock, generation, made}: made = 1 when this call made a new generation
-- (the old one was gone, or this process's clock went back under the one it knows).
local c = redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
local g = redis.call('GET', KEYS[2])
if g and not (c <= tonumber(ARGV[1]) and g == ARGV[2]) then
  return {c, g, 0}
end
g = new_generation_id(ARGV[2], ARGV[4])
redis.call('SET', KEYS[2], g)
return {c, g, 1}
