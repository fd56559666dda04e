-- Sliding-window log (rate_limit/sliding_log.rs holds the same rules in Rust, for the
-- memory backend and the table tests).
-- KEYS[1]: a sorted set of admitted requests, one member per unit of cost, scored by the
-- server's TIME in microseconds.
-- ARGV[1]: limit; ARGV[2]: window (us); ARGV[3]: cost; ARGV[4]: '1' to consume, '0' to peek.
-- Returns {allowed (0/1), remaining, retry_after (us, -1: none), reset_after (us), now (us)}.
--
-- Lua numbers are doubles, exact up to 2^53: a microsecond timestamp (~1.8e15) fits. Numbers
-- go to redis.call as numbers: Redis writes them with all their digits ("%.17g" before 7.0,
-- the shortest exact form since), where Lua's own tostring ("%.14g") and string.format('%.0f')
-- would round or cost more. Only the member names are built as text, from TIME's digits.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local key = KEYS[1]
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])

-- The window is (now - window, now]: a request made `window` ago has just left it.
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
local count = redis.call('ZCARD', key)
if count + cost <= limit then
  if cost > 0 and ARGV[4] == '1' then
    -- Members are unique: `<seconds><microseconds>-n` (seconds have ten digits, so the two
    -- parts never run into each other), n counting on from the number of live members.
    -- While the clock stays on one microsecond nothing is trimmed, so that number only
    -- grows and requests in the same microsecond are all counted. (Only a server clock
    -- stepping back onto a microsecond already used, with fewer members live, could reuse a
    -- name.)
    local name = t[1] .. t[2] .. '-'
    if cost == 1 then
      redis.call('ZADD', key, now, name .. count)
    else
      local args = {}
      for i = 0, cost - 1 do
        args[#args + 1] = now
        args[#args + 1] = name .. (count + i)
        if #args >= 1000 or i == cost - 1 then
          redis.call('ZADD', key, unpack(args))
          args = {}
        end
      end
    end
    -- The newest member is this request's: it, and the key, leave `window` from now.
    redis.call('PEXPIRE', key, math.ceil(window / 1000))
    return {1, limit - count - cost, -1, window, now}
  end
  local reset = 0
  if count > 0 then
    local newest = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
    reset = math.max(tonumber(newest[2]) + window - now, 0)
  end
  return {1, limit - count, -1, reset, now}
end
-- Admitted once the k oldest members have left, k = count + cost - limit (<= count, as
-- cost <= limit): at the k-th oldest member's score + window.
local k = count + cost - limit - 1
local kth = redis.call('ZRANGE', key, k, k, 'WITHSCORES')
local newest = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
return {0, math.max(limit - count, 0), tonumber(kth[2]) + window - now,
  math.max(tonumber(newest[2]) + window - now, 0), now}
