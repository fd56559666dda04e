-- Takes a lock. KEYS[1]: the lock (holds its owner); KEYS[2]: its fencing counter, in the same
-- hash slot. ARGV[1]: the owner (128 random bits, hex); ARGV[2]: the lease in milliseconds;
-- ARGV[3]: the counter's lifetime in milliseconds.
-- Returns {token, 0} when taken, {0, milliseconds left of the holder's lease} when held.
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  if redis.call('EXISTS', KEYS[2]) == 0 then
    -- A counter never used, expired, evicted or flushed starts at the server's clock in
    -- microseconds: above every token handed out before it went, so a resource that keeps
    -- the highest token it saw never refuses the new holders.
    local now = redis.call('TIME')
    redis.call('SET', KEYS[2], now[1] .. string.format('%06d', tonumber(now[2])))
  end
  local token = redis.call('INCR', KEYS[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
  return {token, 0}
end
return {0, redis.call('PTTL', KEYS[1])}
