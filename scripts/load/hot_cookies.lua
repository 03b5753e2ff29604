-- wrk script: POST /user_tags for 100 cookies only, so each one passes the
-- 200-per-action limit many times over and profile queries read full,
-- trimmed profiles.
--   wrk -t1 -c8 -d10s -s scripts/load/hot_cookies.lua http://127.0.0.1:8080
function init(args)
  n = 0
end

request = function()
  n = n + 1
  local body = string.format(
    '{"time":"2022-03-01T00:%02d:%02d.%03dZ","cookie":"hot%017d","country":"PL","device":"PC",' ..
    '"action":"%s","origin":"CAMPAIGN_%d","product_info":{"product_id":%d,"brand_id":"brand_%d",' ..
    '"category_id":"cat_%d","price":%d}}',
    math.floor(n / 60000) % 60, math.floor(n / 1000) % 60, n % 1000, n % 100,
    (n % 3 == 0) and "BUY" or "VIEW", n % 1000, n, n % 250, n % 67, n % 10000)
  return wrk.format("POST", "/user_tags", {["Content-Type"] = "application/json"}, body)
end
