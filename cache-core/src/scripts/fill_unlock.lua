-- Release of a fill lock by its owner only (pipeline/fill_lock.rs): a holder whose lease ran
-- out must not release the lock another process took since. The release is published on the
-- channel named after the lock's key, which wakes the processes waiting for the value.
-- KEYS[1]: the lock's key; ARGV[1]: the owner token. Returns 1 if released.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  -- pcall: a user allowed the lock's key but not its channel still releases; waiters then
  -- notice by their backoff.
  redis.pcall('PUBLISH', KEYS[1], '')
  return 1
end
return 0
