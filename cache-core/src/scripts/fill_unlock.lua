-- Release of a fill lock by its owner only (compute/fill_lock.rs): a holder whose lease ran
-- out must not release the lock another process took since.
-- KEYS[1]: the lock's key; ARGV[1]: the owner token. Returns 1 if released.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
