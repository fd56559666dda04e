-- One look of a process waiting to fill a key (compute/fill_lock.rs): has the value arrived,
-- and if not, is the fill lock free (then take it)?
-- KEYS[1]: the value's key; KEYS[2]: the fill lock's key. ARGV[1]: this waiter's owner token;
-- ARGV[2]: the lease in milliseconds; ARGV[3]: SHA-1 (hex) of what the waiter's read found,
-- '' for nothing.
-- Returns 1 if the key now holds another value than the one read (not a tombstone), 2 if the
-- lock was free and is now held by ARGV[1], 0 if another process holds it.
local current = redis.pcall('GET', KEYS[1])
if type(current) == 'string' and redis.sha1hex(current) ~= ARGV[3]
  and not is_tombstone(KEYS[1]) then
  return 1
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 2
end
return 0
