-- INCRBY, where a tombstone is nothing, so an invalidated counter starts from zero. Run only
-- after a plain INCRBY found something else than a counter. KEYS[1]: the key; ARGV[1]: the
-- increment.
if is_tombstone(KEYS[1]) then
  redis.call('DEL', KEYS[1])
end
return redis.call('INCRBY', KEYS[1], ARGV[1])
