-- Moves a scope's generation past every value it ever held (engine/clear.rs): the larger of
-- the current one plus one and the caller's clock in microseconds (ARGV[1]), so that a
-- generation key lost to eviction and written again never repeats an old generation.
-- Persistent (no TTL): it must outlive the entries it makes misses.
local current = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
local next = math.max(current + 1, tonumber(ARGV[1]))
local text = string.format('%.0f', next)
redis.call('SET', KEYS[1], text)
return text
