-- Sliding-window log (rate_limit/sliding_log.rs holds the same rules in Rust, for the
-- memory backend and the table tests).
-- KEYS[1]: a sorted set of admitted requests, one member per unit of cost, scored by the
-- server's TIME in microseconds.
-- ARGV[1]: limit; ARGV[2]: window (us); ARGV[3]: cost; ARGV[4]: '1' to consume, '0' to peek.
-- Returns {allowed (0/1), remaining, retry_after (us, -1: none), reset_after (us), now (us)}.
--
-- Lua numbers are doubles, exact up to 2^53: a microsecond timestamp (~1.8e15) fits, but
-- a number handed to redis.call is formatted with "%.14g" and would lose its last digits,
-- so every timestamp sent back to Redis is a string: the score is written from TIME's own
-- digits, and the bound of the trim with "%.0f".
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local score = t[1] .. string.format('%06d', tonumber(t[2]))
local key = KEYS[1]
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])

-- The window is (now - window, now]: a request made `window` ago has just left it.
redis.call('ZREMRANGEBYSCORE', key, '-inf', string.format('%.0f', now - window))
local count = redis.call('ZCARD', key)
local allowed = count + cost <= limit
local retry = -1
local reset = 0
if allowed then
  if ARGV[4] == '1' and cost > 0 then
    -- Members are unique: `score-n`, n counting on from the number of live members. While
    -- the clock stays on one microsecond nothing is trimmed, so that number only grows and
    -- requests in the same microsecond are all counted. (Only a server clock stepping back
    -- onto a microsecond already used, with fewer members live, could reuse a name.)
    local args = {}
    for i = 0, cost - 1 do
      args[#args + 1] = score
      args[#args + 1] = score .. '-' .. string.format('%d', count + i)
      if #args >= 1000 or i == cost - 1 then
        redis.call('ZADD', key, unpack(args))
        args = {}
      end
    end
    count = count + cost
    -- The newest member is this request's: it, and the key, leave `window` from now.
    redis.call('PEXPIRE', key, math.ceil(window / 1000))
    reset = window
  end
else
  -- Admitted once the k oldest members have left, k = count + cost - limit (<= count, as
  -- cost <= limit): at the k-th oldest member's score + window.
  local kth = redis.call('ZRANGE', key, count + cost - limit - 1, count + cost - limit - 1, 'WITHSCORES')
  retry = tonumber(kth[2]) + window - now
end
if reset == 0 and count > 0 then
  local newest = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  reset = math.max(tonumber(newest[2]) + window - now, 0)
end
return {allowed and 1 or 0, math.max(limit - count, 0), retry, reset, now}
