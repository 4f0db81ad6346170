-- The read-only generation check (see `generation.rs`): KEYS[1] = the generation;
-- ARGV[1] = a new generation's random suffix, ARGV[2] = the generation this process
-- knows ('' for none). Returns {generation, made}: made = 1 when the key was gone
-- (everything lost) and this call made a new one, created after the one it knew
-- (`new_generation_id`: a later millisecond, even within the same one).
local g = redis.call('GET', KEYS[1])
if g then return {g, 0} end
g = new_generation_id(ARGV[2], ARGV[1])
redis.call('SET', KEYS[1], g)
return {g, 1}
