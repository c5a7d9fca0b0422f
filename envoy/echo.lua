-- The demo upstream: answers every request with the request headers it received, as
-- JSON, so a user (and the tests) can see exactly what keygate forwarded.
-- `x-echo-vary: <v>` makes it answer with `vary: <v>`, to show keygate keeps an upstream vary;
-- `x-echo-status: <n>` makes it answer with status n (how the upstream's answers are counted).

local function json_string(s)
  return '"' .. s:gsub('[%c"\\\128-\255]', function(c)
    return string.format("\\u%04x", c:byte())
  end) .. '"'
end

function envoy_on_request(handle)
  local pairs_out = {}
  for name, value in pairs(handle:headers()) do
    pairs_out[#pairs_out + 1] = "[" .. json_string(name) .. ", " .. json_string(value) .. "]"
  end
  local status = handle:headers():get("x-echo-status") or "200"
  local response = { [":status"] = status, ["content-type"] = "application/json" }
  local vary = handle:headers():get("x-echo-vary")
  if vary ~= nil then
    response["vary"] = vary
  end
  handle:respond(response, '{"upstream": "echo", "headers": [' .. table.concat(pairs_out, ", ") .. "]}\n")
end
