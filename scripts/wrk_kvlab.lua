-- wrk script used by scripts/bench_vs_nginx.py: requests over the key space that
-- `kvlab bench --preload` writes (key-0 .. key-(N-1)), and one machine-readable line at the end.
--
-- Configured by environment, because wrk decides whether requests are dynamic when it loads the
-- script, before init() sees the arguments after `--`:
--   KVLAB_WRK_MODE        static (the URL as given; default) | get (GET /get?key=K) |
--                         set (POST /set with a JSON body)
--   KVLAB_WRK_KEYS        key space size (default 10000)
--   KVLAB_WRK_QUORUM      added as r= to gets, w= to sets (default: none, the cluster's own)
--   KVLAB_WRK_VALUE_SIZE  bytes per written value (default 100)
-- Example: KVLAB_WRK_MODE=get KVLAB_WRK_QUORUM=2 wrk -t2 -c64 -d10s -s wrk_kvlab.lua http://127.0.0.1:8000

local mode = os.getenv("KVLAB_WRK_MODE") or "static"
local keys = tonumber(os.getenv("KVLAB_WRK_KEYS") or "10000")
local quorum = os.getenv("KVLAB_WRK_QUORUM")
local value_size = tonumber(os.getenv("KVLAB_WRK_VALUE_SIZE") or "100")

local thread_count = 0

function setup(thread)
  thread_count = thread_count + 1
  thread:set("thread_id", thread_count)
end

if mode ~= "static" then
  local requests = {}

  function init(args)
    math.randomseed(os.time() * 1000 + (thread_id or 0))
    local value = string.rep("v", value_size)
    -- Every request is built once here, so that wrk's own cost per request stays a table lookup.
    -- At most `prebuilt` of them: a larger key space gets requests for that many keys drawn
    -- from all of it (a million built per thread took seconds and hundreds of MB).
    local prebuilt = math.min(keys, 100000)
    for i = 0, prebuilt - 1 do
      local key = "key-" .. (prebuilt == keys and i or math.random(0, keys - 1))
      if mode == "get" then
        local q = quorum and ("&r=" .. quorum) or ""
        requests[i + 1] = wrk.format("GET", "/get?key=" .. key .. q)
      else
        local q = quorum and ("?w=" .. quorum) or ""
        local body = '{"key":"' .. key .. '","value":"' .. value .. '"}'
        requests[i + 1] = wrk.format("POST", "/set" .. q, {["Content-Type"] = "application/json"}, body)
      end
    end
  end

  function request()
    return requests[math.random(#requests)]
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_RESULT {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "max_us": %d, '
      .. '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
