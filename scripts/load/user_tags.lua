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
  -- stored and counted once. Event time advances 1 ms per request in every
  -- thread, so all threads write the same recent minutes, as live traffic does.
  local run = tonumber(args[1]) or 0
  n = run * 100000000000 + thread_id * 1000000000
  t = 0
end

request = function()
  n = n + 1
  t = t + 1
  local ms = t % 1000
  local s = math.floor(t / 1000) % 60
  local m = math.floor(t / 60000) % 60
  -- Hours too, so event time runs on (for 24 hours of it) instead of
  -- jumping back an hour, which would make every tag a late one.
  local h = math.floor(t / 3600000) % 24
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
