-- Releases a lock if ARGV[1] still owns it (compare-and-delete), and wakes its waiters through
-- the channel named after the lock's key. KEYS[1]: the lock. Returns 1 if released.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  -- pcall: a user allowed the lock's keys but not its channel still releases; waiters then
  -- notice by polling.
  redis.pcall('PUBLISH', KEYS[1], '')
  return 1
end
return 0
