-- wrk script of benchmarks/events_ingest.py: paced GET /recommend timed per request, or paced POST /events batches,
-- both in alternating windows of a shared clock, every response checked.
--
--   wrk -t32 -c32 -d30s -s benchmarks/events_load.lua http://127.0.0.1:8000 -- USERS ITEMS MODE MEAN_DELAY_MS K \
--       BATCH SEED KEY START WINDOW_S
--
-- USERS lists known user ids, heaviest first; ITEMS the bundle's item ids. Users are drawn Zipf-like (exponent 1, as
-- benchmarks/gpu_serving.lua does), items uniformly. Time is cut into windows of WINDOW_S seconds from START (Unix
-- seconds, shared by both wrk processes): even windows are "off", odd ones "on".
--
-- MODE "get": GET /recommend?user_id=U&k=K&exclude_seen=true in every window; a 200 with K items from source 'codes'
-- or 'events' passes. Run it with one connection per thread (-tN -cN): each thread then has one request out at a
-- time, times it itself (clock_gettime through LuaJIT's FFI) and files its latency under the window it was sent in,
-- so that one run gives the latency with events posted and without, from the same connections.
-- MODE "events": POST /events of BATCH events (distinct event ids, the timestamp left to the service), sent only in
-- "on" windows; a 200 passes and its "accepted" count is summed; 503s (Redis did not answer in time) are counted apart.
--
-- Pacing: before each request a connection waits an exponentially distributed time of mean MEAN_DELAY_MS (wrk's
-- delay()), so C connections send about C / (mean delay + latency) requests a second, arriving roughly as a Poisson
-- stream. done() prints one line, "WRK_RESULT {json}", which the caller parses.

local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } binrec_timespec;
int clock_gettime(int clock_id, binrec_timespec *tp);
]]
local clock = ffi.new("binrec_timespec")
local function now()
  ffi.C.clock_gettime(0, clock) -- CLOCK_REALTIME: START comes from another process
  return tonumber(clock.tv_sec) + tonumber(clock.tv_nsec) * 1e-9
end

local ids, items, mode, mean_delay, k, batch, key, prefix, start, window
local counter, sent_at, sent_window = 0, 0, "off"
local threads = {}
-- globals: done() reads them from each thread with thread:get
-- (wrk 4.1 crashes copying a table of large numbers between threads: latencies travel as comma-separated text)
checked, failures, accepted, unavailable, example = 0, 0, 0, 0, ""
latencies_off, latencies_on, failed_off, failed_on = "", "", 0, 0
local pending = { off = {}, on = {} }

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
  key, start, window = args[8], tonumber(args[9]), tonumber(args[10])
  prefix = "load-" .. args[7] .. "-" .. thread_number .. "-"
end

local function window_at(t)
  return (math.floor((t - start) / window) % 2 == 1) and "on" or "off"
end

local log_n
local function zipf_user()
  log_n = log_n or math.log(#ids + 1)
  return ids[math.floor(math.exp(math.random() * log_n))]
end

function delay()
  local wait = mean_delay > 0 and -mean_delay * math.log(1 - math.random()) / 1000 or 0
  if mode == "events" then
    local t = now()
    while window_at(t + wait) == "off" do wait = wait + window end -- the same moment of the next "on" window
  end
  return math.floor(wait * 1000 + 0.5)
end

function request()
  sent_at = now()
  sent_window = window_at(sent_at)
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
  if sent_window == "on" then failed_on = failed_on + 1 else failed_off = failed_off + 1 end
  if status == 503 then unavailable = unavailable + 1 end
  if example == "" then example = status .. " " .. string.sub(body or "", 1, 200) end
end

function response(status, headers, body)
  checked = checked + 1
  local list = pending[sent_window]
  list[#list + 1] = math.floor((now() - sent_at) * 1e6 + 0.5) -- microseconds
  if #list >= 10 then -- into the thread's text now and then: done() can only read globals
    if sent_window == "on" then
      latencies_on = latencies_on .. table.concat(list, ",") .. ","
    else
      latencies_off = latencies_off .. table.concat(list, ",") .. ","
    end
    pending[sent_window] = {}
  end
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

local function percentile(sorted, p)
  if #sorted == 0 then return 0 end
  return sorted[math.max(1, math.ceil(p / 100 * #sorted))]
end

local function summary_of(list)
  table.sort(list)
  local total = 0
  for _, v in ipairs(list) do total = total + v end
  return string.format('{"count":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d,"max_us":%d,"mean_us":%.1f}',
    #list, percentile(list, 50), percentile(list, 90), percentile(list, 99), percentile(list, 99.9),
    list[#list] or 0, #list > 0 and total / #list or 0)
end

function done(summary, latency, requests)
  local merged = { off = {}, on = {} }
  local total_checked, total_failed, total_accepted, total_503, first = 0, 0, 0, 0, ""
  local failed_in = { off = 0, on = 0 }
  for _, thread in ipairs(threads) do
    total_checked = total_checked + thread:get("checked")
    total_failed = total_failed + thread:get("failures")
    total_accepted = total_accepted + thread:get("accepted")
    total_503 = total_503 + thread:get("unavailable")
    if first == "" then first = thread:get("example") end
    for _, name in ipairs({ "off", "on" }) do
      for v in string.gmatch(thread:get("latencies_" .. name), "%d+") do merged[name][#merged[name] + 1] = tonumber(v) end
      failed_in[name] = failed_in[name] + thread:get("failed_" .. name)
    end
  end
  first = string.gsub(first, '[%c"\\]', " ") -- safe inside a JSON string
  local e = summary.errors
  io.write(string.format(
    'WRK_RESULT {"requests":%d,"duration_us":%d,"checked":%d,"failed_checks":%d,"accepted":%d,"status_503":%d,' ..
    '"socket_errors":%d,"failed_off":%d,"failed_on":%d,"off":%s,"on":%s,"first_failure":"%s"}\n',
    summary.requests, summary.duration, total_checked, total_failed, total_accepted, total_503,
    e.connect + e.read + e.write + e.timeout, failed_in.off, failed_in.on, summary_of(merged.off),
    summary_of(merged.on), first))
end
