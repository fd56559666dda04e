-- Sliding-window counter: two fixed windows, the previous one weighted by how much of it
-- the sliding window still covers (rate_limit/sliding_window.rs holds the same rules, with
-- the same floating-point operations in the same order, so both backends round alike).
-- KEYS[1]: a string `w c p s`: the index of the current fixed window, its count, the previous
-- window's count, and the window width (us) these were counted with. (A string, not a hash:
-- one SET ... PX writes it and its expiry, where a hash needs HSET then PEXPIRE.)
-- ARGV[1]: limit; ARGV[2]: window (us); ARGV[3]: cost; ARGV[4]: '1' to consume, '0' to peek.
-- Returns {allowed (0/1), remaining, retry_after (us, -1: none), reset_after (us), now (us)}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local key = KEYS[1]
local limit = tonumber(ARGV[1])
local width = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local idx = math.floor(now / width)
local start = idx * width
local elapsed = now - start

local cur, prev = 0, 0
local stored = redis.call('GET', key)
local w, c, p, s = nil, 0, 0, nil
if stored then
  w, c, p, s = string.match(stored, '^(%d+) (%d+) (%d+) (%d+)$')
end
if w then
  w, c, p, s = tonumber(w), tonumber(c), tonumber(p), tonumber(s)
  if s ~= width then
    -- The window was changed at run time: what was counted counts as the previous window.
    prev = c + p
  elseif w >= idx then
    cur, prev = c, p
  elseif w == idx - 1 then
    prev = c
  end
end

local estimate = prev * (width - elapsed) / width + cur
local allowed = estimate + cost <= limit
local retry = -1
if allowed then
  if ARGV[4] == '1' and cost > 0 then
    cur = cur + cost
    estimate = estimate + cost
    -- Still counted, as the previous window, until the end of the next one.
    redis.call('SET', key, string.format('%.0f %.0f %.0f %.0f', idx, cur, prev, width),
      'PX', math.ceil((start + 2 * width - now) / 1000))
  end
else
  local function fits(p, c, e)
    return p * (width - e) / width + c + cost <= limit
  end
  local e = nil
  if prev > 0 and cur + cost <= limit then
    -- Later in this window, once the previous one weighs little enough.
    e = math.ceil(width - (limit - cur - cost) * width / prev)
    for _ = 1, 3 do
      if e < width and not fits(prev, cur, e) then e = e + 1 end
    end
    if e >= width or not fits(prev, cur, e) then e = nil end
  end
  if e then
    retry = e - elapsed
  else
    -- In the next window, where this one is the previous.
    local f = 0
    if cur > 0 then
      f = math.max(math.ceil(width - (limit - cost) * width / cur), 0)
      for _ = 1, 3 do
        if f < width and not fits(cur, 0, f) then f = f + 1 end
      end
    end
    retry = start + width + f - now
  end
end
local reset = 0
if cur > 0 then
  reset = start + 2 * width - now
elseif prev > 0 then
  reset = start + width - now
end
return {allowed and 1 or 0, math.max(math.floor(limit - estimate), 0), retry, reset, now}
