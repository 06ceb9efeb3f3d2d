-- wrk script for bench/api_load.py: a mix of the API's list endpoints, with a bearer token.
--
--   wrk -t C -c C -d S -s bench/api_load.lua URL -- TOKEN NAME PATH WALK [NAME PATH WALK ...]
--
-- One connection per thread (-t = -c), so each response answers the thread's last request:
-- the script times each request (LuaJIT's ffi clock) under its endpoint, and an
-- endpoint with WALK = 1 follows next_cursor from page to page, as a client reading the
-- whole list would (back to the first page after the last). done() prints one line per
-- endpoint and one for everything (wrk's own latency histogram, which wrk corrects for
-- coordinated omission), and one per X-Finops-Read-Cache value seen:
--   FINOPS <tab> name <tab> requests <tab> p50 ms <tab> p99 ms <tab> non-200 answers
--   FINOPS_CACHE <tab> hit|shared|miss|off|none <tab> answers

local ffi = require("ffi")
ffi.cdef([[
typedef struct { long tv_sec; long tv_nsec; } finops_timespec;
int clock_gettime(int clock, finops_timespec *now);
]])
local clock = ffi.new("finops_timespec")
local function now()
  ffi.C.clock_gettime(1, clock) -- CLOCK_MONOTONIC
  return tonumber(clock.tv_sec) + tonumber(clock.tv_nsec) * 1e-9
end

local threads = {}
local next_seed = 1

function setup(thread)
  thread:set("seed", next_seed)
  next_seed = next_seed + 1
  table.insert(threads, thread)
end

-- Globals, so that done() can read each thread's: `names` and `lat<i>` (seconds, for the
-- endpoint names[i]) are flat arrays, as wrk's thread:get copies nested tables wrongly.
names = {}
failures = 0
answered = {} -- X-Finops-Read-Cache value -> count (hit, shared, miss, off)
local endpoints = {}
local headers = {}
local cursors = {}
local current, started

function init(args)
  math.randomseed(seed or 1)
  headers["Authorization"] = "Bearer " .. args[1]
  for i = 2, #args, 3 do
    local index = #endpoints + 1
    endpoints[index] = { index = index, path = args[i + 1], walk = args[i + 2] == "1" }
    names[index] = args[i]
    _G["lat" .. index] = {}
  end
end

function request()
  current = endpoints[math.random(#endpoints)]
  local path = current.path
  local cursor = current.walk and cursors[current.index]
  if cursor then
    path = path .. "&cursor=" .. cursor
  end
  started = now()
  return wrk.format("GET", path, headers)
end

function response(status, headers, body)
  local seen = _G["lat" .. current.index]
  seen[#seen + 1] = now() - started
  local cache = headers["x-finops-read-cache"] or "none"
  answered[cache] = (answered[cache] or 0) + 1
  if status ~= 200 then
    failures = failures + 1
  end
  if current.walk then
    cursors[current.index] = body and body:match('"next_cursor":"([^"]+)"') -- nil: start over
  end
end

local function percentile(sorted, p)
  if #sorted == 0 then
    return 0
  end
  return sorted[math.max(1, math.min(#sorted, math.ceil(#sorted * p)))] * 1000
end

function done(summary, latency, _)
  local merged, bad = {}, 0
  local listed = threads[1]:get("names")
  for _, thread in ipairs(threads) do
    bad = bad + thread:get("failures")
    for i = 1, #listed do
      merged[i] = merged[i] or {}
      for _, v in ipairs(thread:get("lat" .. i)) do
        merged[i][#merged[i] + 1] = v
      end
    end
  end
  for i, values in ipairs(merged) do
    table.sort(values)
    io.write(string.format("FINOPS\t%s\t%d\t%.2f\t%.2f\t-\n", listed[i], #values,
      percentile(values, 0.5), percentile(values, 0.99)))
  end
  local sources = {}
  for _, thread in ipairs(threads) do
    for label, count in pairs(thread:get("answered")) do
      sources[label] = (sources[label] or 0) + count
    end
  end
  for label, count in pairs(sources) do
    io.write(string.format("FINOPS_CACHE\t%s\t%d\n", label, count))
  end
  local e = summary.errors
  io.write(string.format("FINOPS\tall\t%d\t%.2f\t%.2f\t%d\n", summary.requests,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    bad + e.connect + e.read + e.write + e.timeout))
end
