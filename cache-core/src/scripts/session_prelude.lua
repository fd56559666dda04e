-- Sessions: a record is a hash (d: data, u: user, c: created-at ms, x: absolute deadline ms,
-- v: version), whose TTL is min(idle timeout, x - now). Time is the server's.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Slides the record's TTL to min(idle, deadline - now), but only when that adds at least
-- `step` ms: most reads send no write to replicas and the AOF. False when the record is past
-- its deadline (and then it is deleted).
local function slide(key, deadline, idle, step)
  local left = deadline - now_ms()
  if left <= 0 then
    redis.call('DEL', key)
    return false
  end
  local want = math.min(idle, left)
  local pttl = redis.call('PTTL', key)
  if pttl < 0 or want - pttl >= step then
    redis.call('PEXPIRE', key, want)
  end
  return true
end
