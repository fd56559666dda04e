-- GCRA (generic cell rate algorithm): one timestamp per key, the theoretical arrival time
-- (TAT) of the next request; rate_limit/gcra.rs holds the same rules in Rust.
-- KEYS[1]: the TAT, in microseconds of the server's TIME.
-- ARGV[1]: emission interval T (us, period / limit); ARGV[2]: burst; ARGV[3]: cost;
-- ARGV[4]: '1' to consume, '0' to peek.
-- Returns {allowed (0/1), remaining, retry_after (us, -1: none), reset_after (us), now (us)}.
-- The TAT goes to redis.call as a number: Redis writes it with all its digits ("%.17g"
-- before 7.0, the shortest exact form since), where Lua's tostring ("%.14g") would round a
-- microsecond timestamp and string.format('%.0f') costs more.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local key = KEYS[1]
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
-- How far ahead of now the TAT may run: `burst` requests at once from an idle start.
local tolerance = burst * interval

local tat = tonumber(redis.call('GET', key) or '0') or 0
if tat < now then tat = now end
local new_tat = tat + cost * interval
local allow_at = new_tat - tolerance
local allowed = now >= allow_at
local retry = -1
if allowed then
  if ARGV[4] == '1' and cost > 0 then
    tat = new_tat
    redis.call('SET', key, tat, 'PX', math.ceil((tat - now) / 1000))
  end
else
  retry = allow_at - now
end
local remaining = math.max(math.floor((tolerance - (tat - now)) / interval), 0)
return {allowed and 1 or 0, remaining, retry, tat - now, now}
