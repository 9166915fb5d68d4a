-- wrk script for bench/queue-pull.sh: GET /queues/tasks as a mix of the pulls staff make.
--
-- Tokens come from CAREPATH_TOKENS ("institution:role:token,..."), as `carepath bench-api`
-- prints them; each request is sent with one of them. The mix (page size 50 throughout):
-- 25 % the institution's open queue, 25 % filtered by the caller's role, 10 % by status
-- (claimed; active with the role), 15 % a due window (overdue; due in the next 7 days),
-- 25 % a later page (a keyset cursor at a random depth, half of them with the role).
-- Requests are prepared once per thread, so the Lua cost per request is a table lookup.

local counter = 0

function setup(thread)
  counter = counter + 1
  thread:set("id", counter)
end

local function iso(t)
  return os.date("!%Y-%m-%dT%H:%M:%SZ", t)
end

local requests = {}
local next_request = 1

function init(args)
  math.randomseed(os.time() * 1000 + (id or 0))
  local tokens = {}
  for entry in string.gmatch(os.getenv("CAREPATH_TOKENS") or "", "[^,]+") do
    local inst, role, token = string.match(entry, "([^:]+):([^:]+):([^:]+)")
    if token then
      table.insert(tokens, { inst = inst, role = role, token = token })
    end
  end
  if #tokens == 0 then
    error("set CAREPATH_TOKENS to institution:role:token,... (see carepath bench-api)")
  end
  local now = os.time()
  for i = 1, 4096 do
    local who = tokens[math.random(#tokens)]
    local q
    local dice = math.random(100)
    if dice <= 25 then
      q = "limit=50"
    elseif dice <= 50 then
      q = "role=" .. who.role .. "&limit=50"
    elseif dice <= 55 then
      q = "status=claimed&limit=50"
    elseif dice <= 60 then
      q = "status=active&role=" .. who.role .. "&limit=50"
    elseif dice <= 68 then
      q = "due_before=" .. iso(now) .. "&limit=50"
    elseif dice <= 75 then
      q = "due_after=" .. iso(now) .. "&due_before=" .. iso(now + 7 * 86400) .. "&limit=50"
    else
      -- priority.due_at.id of the last row of a previous page, somewhere in the queue.
      local cursor = string.format("%d.%d.%d", math.random(0, 3),
        now + math.random(-14 * 86400, 30 * 86400), math.random(1, 1000000))
      q = "cursor=" .. cursor .. "&limit=50"
      if math.random(2) == 1 then
        q = "role=" .. who.role .. "&" .. q
      end
    end
    requests[i] = wrk.format("GET", "/queues/tasks?" .. q,
      { ["Authorization"] = "Bearer " .. who.token })
  end
end

function request()
  local r = requests[next_request]
  next_request = next_request % #requests + 1
  return r
end

function done(summary, latency, requests)
  local seconds = summary.duration / 1e6
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d rps=%.0f p50_ms=%.2f p90_ms=%.2f p99_ms=%.2f p999_ms=%.2f max_ms=%.2f non2xx=%d socket_errors=%d\n",
    summary.requests, summary.requests / seconds,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000, latency:percentile(99.9) / 1000, latency.max / 1000,
    e.status, e.connect + e.read + e.write + e.timeout))
end
