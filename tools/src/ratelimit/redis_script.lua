-- One decision, checked and counted in one step: Redis runs a script alone, so no other
-- decision can slip in between the check and the count, whichever replica sent it.
--
-- KEYS[i]: counter i's name, prefixed; its key in a window is KEYS[i] .. ':' .. start.
-- ARGV[2i - 1], ARGV[2i]: counter i's limit, and its window in seconds (at least 1).
-- Returns {refused, count_1, reset_1, ..., count_n, reset_n}: `refused` is the 1-based index
-- of the first counter over its limit, or 0 when every counter counted the request; each
-- count is the counter's after the decision, each reset the seconds left in its window.
--
-- The window's key is named here, from Redis's own clock, so replicas whose clocks differ
-- still count in the same key: one Redis, not a Cluster, where keys must be named up front.

-- A key outlives its window by this much: were Redis's clock stepped back by up to this,
-- the window's count would still be there, not restarted from zero.
local margin_ms = 1000

local time = redis.call('TIME')
local now = tonumber(time[1])
local now_ms = now * 1000 + math.floor(tonumber(time[2]) / 1000)

local n = #KEYS
local names, counts, resets, ends = {}, {}, {}, {}
local listed = {}
local refused = 0
for i = 1, n do
  local seconds = tonumber(ARGV[2 * i])
  local start = now - now % seconds
  local name = KEYS[i] .. ':' .. start
  -- A counter listed twice counts the request twice, so it needs room for both.
  local earlier = listed[name] or 0
  listed[name] = earlier + 1
  names[i] = name
  counts[i] = tonumber(redis.call('GET', name) or '0') + earlier
  ends[i] = (start + seconds) * 1000
  resets[i] = start + seconds - now
  if refused == 0 and counts[i] >= tonumber(ARGV[2 * i - 1]) then
    refused = i
  end
end

if refused == 0 then
  for i = 1, n do
    counts[i] = redis.call('INCR', names[i])
    if counts[i] == 1 then
      redis.call('PEXPIRE', names[i], ends[i] - now_ms + margin_ms)
    end
  end
end

local out = {refused}
for i = 1, n do
  out[#out + 1] = counts[i]
  out[#out + 1] = resets[i]
end
return out
