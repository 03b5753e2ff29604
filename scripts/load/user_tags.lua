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
  -- Ids are unique per thread; event time advances 1 ms per request in every
  -- thread, so all threads write the same recent minutes, as live traffic does.
  n = thread_id * 1000000000
  t = 0
end

request = function()
  n = n + 1
  t = t + 1
  local ms = t % 1000
  local s = math.floor(t / 1000) % 60
  local m = math.floor(t / 60000) % 60
  local action = (n % 10 == 0) and "BUY" or "VIEW"
  local body = string.format(
    '{"time":"2022-03-01T00:%02d:%02d.%03dZ","cookie":"cookie%015d","country":"PL","device":"PC",' ..
    '"action":"%s","origin":"CAMPAIGN_%d","product_info":{"product_id":%d,"brand_id":"brand_%d",' ..
    '"category_id":"cat_%d","price":%d}}',
    m, s, ms, n % 1000000, action, n % 1000, n, n % 250, n % 67, n % 10000)
  return wrk.format("POST", "/user_tags", {["Content-Type"] = "application/json"}, body)
end

response = function(status, headers, body)
  if status ~= 204 then
    io.stderr:write("unexpected status " .. status .. ": " .. body .. "\n")
  end
end
