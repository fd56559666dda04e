-- Invalidation by key: each key's value is replaced by a tombstone that lives for the
-- invalidation hold, so a computation that read the key before this runs does not store its
-- result over it (see set_if_unchanged.lua).
-- KEYS: the keys. ARGV[1]: the tombstone; ARGV[2]: the hold, in milliseconds.
-- Returns how many keys held a value (not a tombstone, not nothing).
local held = 0
for _, key in ipairs(KEYS) do
  -- One GETRANGE tells a value (or something that is not a string) from a tombstone or
  -- nothing; only an empty string needs a second look.
  local head = redis.pcall('GETRANGE', key, 0, #TOMBSTONE - 1)
  if type(head) ~= 'string' or (head ~= '' and head ~= TOMBSTONE)
    or (head == '' and redis.call('EXISTS', key) == 1) then
    held = held + 1
  end
  redis.call('SET', key, ARGV[1], 'PX', ARGV[2])
end
return held
