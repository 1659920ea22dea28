-- wrk script of benchmarks/gpu_serving.py: the locustfile's request mix, every response checked.
--
--   wrk -t4 -c64 -d10s --latency -s benchmarks/gpu_serving.lua http://127.0.0.1:8000 -- USERS_FILE K BATCH SEED [MIX]
--
-- USERS_FILE lists known user ids, heaviest first (the caller shuffles them with a fixed seed), or for a synthetic
-- catalogue of a million users holds one line, "#affine PREFIX COUNT A B", that orders them by a fixed permutation
-- (every wrk thread reads the file before the clock starts: a million lines cost seconds a step). Per 110 requests:
-- 95 GET /recommend of a Zipf-drawn known user (exponent 1: rank r is drawn as floor((n + 1)^u), u uniform), 10 POST
-- /recommend of BATCH Zipf-drawn users, 5 GET of a user the model does not know (popularity fallback); k = K with
-- exclude-seen, the service's default. MIX "post" sends only the batch POSTs (BATCH users each) instead, "get" only the
-- GETs of known users. A response counts as failed unless it is a 200 whose body answers with
-- exactly K items from the expected source ('codes' for known users, 'popular' for unknown ones), every user of a
-- batch answered. done() prints one line, "WRK_RESULT {json}", which the caller parses.

local user_at, n, log_n, k, batch, mix
local threads = {}
checked, failures, example = 0, 0, ""  -- globals: done() reads them from each thread with thread:get

function setup(thread)
  table.insert(threads, thread)
  thread:set("thread_number", #threads)
end

function init(args)
  local handle = assert(io.open(args[1]))
  local header = handle:read("*l") or ""
  handle:close()
  local prefix, count, a, b = string.match(header, "^#affine (%S+) (%d+) (%d+) (%d+)$")
  if prefix then  -- ids PREFIX0..PREFIX(count-1); rank r is the id (r·a + b) mod count (a coprime to count)
    n, a, b = tonumber(count), tonumber(a), tonumber(b)
    user_at = function(rank) return prefix .. ((rank * a + b) % n) end
  else
    local ids = {}
    for line in io.lines(args[1]) do
      if line ~= "" then ids[#ids + 1] = line end
    end
    n = #ids
    user_at = function(rank) return ids[rank] end
  end
  assert(n > 0, "no user ids in " .. args[1])
  log_n = math.log(n + 1)
  k = tonumber(args[2])
  batch = tonumber(args[3])
  math.randomseed(tonumber(args[4]) + 7919 * thread_number)
  mix = args[5] or "mix"
end

local function zipf_user()
  return user_at(math.floor(math.exp(math.random() * log_n)))
end

local json_headers = { ["Content-Type"] = "application/json" }

function request()
  local draw = (mix == "post" and 100) or (mix == "get" and 1) or math.random(110)
  if draw <= 95 then
    return wrk.format("GET", "/recommend?user_id=" .. zipf_user() .. "&k=" .. k)
  elseif draw <= 105 then
    local users = {}
    for i = 1, batch do users[i] = zipf_user() end
    local body = '{"user_ids":["' .. table.concat(users, '","') .. '"],"k":' .. k .. "}"
    return wrk.format("POST", "/recommend", json_headers, body)
  end
  return wrk.format("GET", "/recommend?user_id=unknown-" .. math.random(1000000000) .. "&k=" .. k)
end

local function count(body, pattern)
  return select(2, string.gsub(body, pattern, ""))
end

local function fail(status, body)
  failures = failures + 1
  if example == "" then example = status .. " " .. string.sub(body or "", 1, 200) end
end

function response(status, headers, body)
  checked = checked + 1
  if status ~= 200 then return fail(status, body) end
  local items = count(body, '"item_id":')
  if string.sub(body, 1, 12) == '{"results":[' then
    if count(body, '"source":"codes"') ~= batch or items ~= batch * k then return fail(status, body) end
  elseif string.sub(body, 1, 20) == '{"user_id":"unknown-' then
    if count(body, '"source":"popular"') ~= 1 or items ~= k then return fail(status, body) end
  elseif count(body, '"source":"codes"') ~= 1 or items ~= k then
    return fail(status, body)
  end
end

function done(summary, latency, requests)
  local total_checked, total_failed, first = 0, 0, ""
  for _, thread in ipairs(threads) do
    total_checked = total_checked + thread:get("checked")
    total_failed = total_failed + thread:get("failures")
    if first == "" then first = thread:get("example") end
  end
  first = string.gsub(first, '[%c"\\]', " ")  -- safe inside a JSON string
  local e = summary.errors
  io.write(string.format(
    'WRK_RESULT {"requests":%d,"duration_us":%d,"checked":%d,"failed_checks":%d,"connect_errors":%d,' ..
    '"read_errors":%d,"write_errors":%d,"timeouts":%d,"status_errors":%d,"p50_us":%d,"p90_us":%d,' ..
    '"p95_us":%d,"p99_us":%d,"p999_us":%d,"max_us":%d,"mean_us":%.1f,"first_failure":"%s"}\n',
    summary.requests, summary.duration, total_checked, total_failed, e.connect, e.read, e.write, e.timeout,
    e.status, latency:percentile(50), latency:percentile(90), latency:percentile(95), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean, first))
end
