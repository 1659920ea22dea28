-- wrk script of benchmarks/events_ingest.py: paced GET /recommend, or paced POST /events batches, every response
-- checked.
--
--   wrk -t1 -c32 -d10s -s benchmarks/events_load.lua http://127.0.0.1:8000 -- USERS ITEMS MODE MEAN_DELAY_MS K BATCH \
--       SEED KEY
--
-- USERS lists known user ids, heaviest first; ITEMS the bundle's item ids. Users are drawn Zipf-like (exponent 1, as
-- benchmarks/gpu_serving.lua does), items uniformly. MODE "get": GET /recommend?user_id=U&k=K&exclude_seen=true, a
-- 200 with K items from source 'codes' or 'events' passes. MODE "events": POST /events of BATCH events (distinct
-- event ids, the timestamp left to the service), a 200 passes and its "accepted" count is summed; 503s (Redis did not
-- answer in time) are counted apart. Pacing: before each request a connection waits an exponentially distributed
-- time of mean MEAN_DELAY_MS (wrk's delay()), so C connections send about C / (mean delay + latency) requests a
-- second, arriving roughly as a Poisson stream. done() prints one line, "WRK_RESULT {json}", which the caller parses.

local ids, items, mode, mean_delay, k, batch, key, prefix
local counter = 0
local threads = {}
checked, failures, accepted, unavailable, example = 0, 0, 0, 0, ""  -- globals: done() reads them per thread

function setup(thread)
  table.insert(threads, thread)
  thread:set("thread_number", #threads)
end

local function read_lines(path)
  local out = {}
  for line in io.lines(path) do
    if line ~= "" then out[#out + 1] = line end
  end
  assert(#out > 0, "no ids in " .. path)
  return out
end

function init(args)
  ids, items = read_lines(args[1]), read_lines(args[2])
  mode, mean_delay, k, batch = args[3], tonumber(args[4]), tonumber(args[5]), tonumber(args[6])
  math.randomseed(tonumber(args[7]) + 7919 * thread_number)
  key = args[8]
  prefix = "load-" .. args[7] .. "-" .. thread_number .. "-"
end

local log_n
local function zipf_user()
  log_n = log_n or math.log(#ids + 1)
  return ids[math.floor(math.exp(math.random() * log_n))]
end

function delay()
  if mean_delay <= 0 then return 0 end
  return math.floor(-mean_delay * math.log(1 - math.random()) + 0.5)
end

function request()
  if mode == "get" then
    return wrk.format("GET", "/recommend?user_id=" .. zipf_user() .. "&k=" .. k .. "&exclude_seen=true")
  end
  local events = {}
  for i = 1, batch do
    counter = counter + 1
    events[i] = '{"user_id":"' .. zipf_user() .. '","item_id":"' .. items[math.random(#items)] ..
      '","event_id":"' .. prefix .. counter .. '"}'
  end
  local headers = { ["Content-Type"] = "application/json", ["X-API-Key"] = key }
  return wrk.format("POST", "/events", headers, '{"events":[' .. table.concat(events, ",") .. "]}")
end

local function count(body, pattern)
  return select(2, string.gsub(body, pattern, ""))
end

local function fail(status, body)
  failures = failures + 1
  if status == 503 then unavailable = unavailable + 1 end
  if example == "" then example = status .. " " .. string.sub(body or "", 1, 200) end
end

function response(status, headers, body)
  checked = checked + 1
  if status ~= 200 then return fail(status, body) end
  if mode == "get" then
    local sources = count(body, '"source":"codes"') + count(body, '"source":"events"')
    if sources ~= 1 or count(body, '"item_id":') ~= k then return fail(status, body) end
  else
    local n = string.match(body, '"accepted":(%d+)')
    if n == nil then return fail(status, body) end
    accepted = accepted + tonumber(n)
  end
end

function done(summary, latency, requests)
  local total_checked, total_failed, total_accepted, total_503, first = 0, 0, 0, 0, ""
  for _, thread in ipairs(threads) do
    total_checked = total_checked + thread:get("checked")
    total_failed = total_failed + thread:get("failures")
    total_accepted = total_accepted + thread:get("accepted")
    total_503 = total_503 + thread:get("unavailable")
    if first == "" then first = thread:get("example") end
  end
  first = string.gsub(first, '[%c"\\]', " ")  -- safe inside a JSON string
  local e = summary.errors
  io.write(string.format(
    'WRK_RESULT {"requests":%d,"duration_us":%d,"checked":%d,"failed_checks":%d,"accepted":%d,"status_503":%d,' ..
    '"socket_errors":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d,"max_us":%d,"mean_us":%.1f,' ..
    '"first_failure":"%s"}\n',
    summary.requests, summary.duration, total_checked, total_failed, total_accepted, total_503,
    e.connect + e.read + e.write + e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), latency.max, latency.mean, first))
end
