-- new_generation_id(known, suffix): a new generation id '<ms>-<suffix>' whose ms is
-- the server's now, or one past the known generation's when that is not earlier, so
-- that a new generation always compares newer than the one it replaces.
local function new_generation_id(known, suffix)
  local t = tonumber(now_ms())
  local k = tonumber(string.match(known, '^(%d+)-') or '0')
  if t <= k then t = k + 1 end
  return string.format('%d', t) .. '-' .. suffix
end
