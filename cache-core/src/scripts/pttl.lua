-- PTTL, where a tombstone is nothing (-2). KEYS[1]: the key.
if is_tombstone(KEYS[1]) then
  return -2
end
return redis.call('PTTL', KEYS[1])
