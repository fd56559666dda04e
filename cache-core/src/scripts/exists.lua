-- EXISTS, where a tombstone is nothing. KEYS[1]: the key.
if is_tombstone(KEYS[1]) then
  return 0
end
return redis.call('EXISTS', KEYS[1])
