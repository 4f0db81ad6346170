-- The read-only generation check (see `generation.rs`): KEYS[1] = the generation;
-- ARGV[1] = a new generation's random suffix. Returns {generation, made}: made = 1
-- when the key was gone (everything lost) and this call made a new one.
local g = redis.call('GET', KEYS[1])
if g then return {g, 0} end
g = now_ms() .. '-' .. ARGV[1]
redis.call('SET', KEYS[1], g)
return {g, 1}
