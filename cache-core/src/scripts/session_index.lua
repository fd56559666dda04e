-- KEYS[1] a user's index: a sorted set of session ids scored by their absolute deadline.
-- ARGV: id, max ms, deadline ms ('0': now + max), sample size, size above which to sample.
-- Adds the id, drops entries past their deadline, expires the set with its last deadline;
-- returns {deadline, a random sample of ids} (the caller drops those whose record is gone).
local now = now_ms()
local x = tonumber(ARGV[3])
if x == 0 then
  x = now + tonumber(ARGV[2])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], string.format('%.0f', x), ARGV[1])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], last[2])
local sample = {}
if redis.call('ZCARD', KEYS[1]) > tonumber(ARGV[5]) then
  sample = redis.call('ZRANDMEMBER', KEYS[1], ARGV[4])
end
return {x, sample}
