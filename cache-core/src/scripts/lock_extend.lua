-- Sets a lock's lease to ARGV[2] milliseconds if ARGV[1] still owns it (compare-and-pexpire).
-- KEYS[1]: the lock. Returns 1 if extended.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
