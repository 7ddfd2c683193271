-- wrk script for bench/serve.py: POST one OIP v2 JSON body to paths picked uniformly at random.
-- wrk -s bench/wrk_oip.lua URL -- PATHS_FILE BODY_FILE   (PATHS_FILE: one path per line)
-- Prints one JSON line like bench/serve_load.py: requests, errors, seconds, rps, p50_ms, p99_ms.

local paths = {}
local body = ""

function init(args)
  for line in io.lines(args[1]) do
    paths[#paths + 1] = line
  end
  local f = assert(io.open(args[2], "rb"))
  body = f:read("*a")
  f:close()
  math.randomseed(os.time() + #tostring({}))
end

function request()
  local path = paths[math.random(#paths)]
  return wrk.format("POST", path, { ["Content-Type"] = "application/json" }, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  local seconds = summary.duration / 1e6
  io.write(string.format(
    '{"requests": %d, "errors": %d, "seconds": %.3f, "rps": %.1f, "p50_ms": %.3f, "p99_ms": %.3f}\n',
    summary.requests, e.status + e.connect + e.read + e.write + e.timeout, seconds,
    summary.requests / seconds, latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
