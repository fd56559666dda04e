-- PEXPIRE, where a tombstone is nothing (not extended, 0). KEYS[1]: the key; ARGV[1]: the TTL
-- in milliseconds.
if is_tombstone(KEYS[1]) then
  return 0
end
return redis.call('PEXPIRE', KEYS[1], ARGV[1])
