-- wrk script: POST /user_tags with distinct, valid tags.
--   wrk -t2 -c64 -d30s --latency -s scripts/load/user_tags.lua http://127.0.0.1:8080
-- Each wrk thread numbers its own tags, so no two requests carry the same tag
-- (identical tags would be deduplicated by the store and flatter the figure).
local threads = {}
local next_id = 0

function setup(thread)
  thread:set("thread_id", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

function init(args)
  -- Ids are unique per thread, and per run when the script is given a run
  -- number (`wrk ... -s user_tags.lua URL -- RUN`): identical tags would be
  -- stored and counted once.
  local run = tonumber(args[1]) or 0
  n = run * 100000000000 + thread_id * 1000000000
end

request = function()
  n = n + 1
  -- Event time follows the wall clock, as a live shop's tags do: the time
  -- of day now (UTC), on 2022-03-01 (the day scripts/lib.sh's count_all
  -- counts), so successive runs go on forward in event time. Only a run
  -- across midnight UTC jumps back a day.
  local now = os.time() % 86400
  local h = math.floor(now / 3600)
  local m = math.floor(now / 60) % 60
  local s = now % 60
  local ms = n % 1000
  local action = (n % 10 == 0) and "BUY" or "VIEW"
  local body = string.format(
    '{"time":"2022-03-01T%02d:%02d:%02d.%03dZ","cookie":"cookie%015d","country":"PL","device":"PC",' ..
    '"action":"%s","origin":"CAMPAIGN_%d","product_info":{"product_id":%d,"brand_id":"brand_%d",' ..
    '"category_id":"cat_%d","price":%d}}',
    h, m, s, ms, n % 1000000, action, n % 1000, n, n % 250, n % 67, n % 10000)
  return wrk.format("POST", "/user_tags", {["Content-Type"] = "application/json"}, body)
end

response = function(status, headers, body)
  if status ~= 204 then
    io.stderr:write("unexpected status " .. status .. ": " .. body .. "\n")
  end
end
