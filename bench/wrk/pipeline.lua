-- bench/wrk/pipeline.lua: HTTP/1.1 pipelining for wrk.
--
-- Every write carries DEPTH copies of the request (default 16) back to back; wrk's response
-- parser counts each response, so requests/s and latency are per request.
--
--   wrk -t1 -c100 -d10s --latency -s bench/wrk/pipeline.lua http://127.0.0.1:PORT/hello.txt -- 16
--
-- The request is wrk's own (method, path and headers from the command line), built once per
-- thread with wrk.format.

local depth = 16
local batch = nil

function init(args)
  if args[1] ~= nil then
    depth = tonumber(args[1])
    if depth == nil or depth < 1 then
      error("pipeline.lua: depth must be a positive integer, got " .. tostring(args[1]))
    end
  end
  local one = wrk.format(nil, wrk.path)
  local copies = {}
  for i = 1, depth do
    copies[i] = one
  end
  batch = table.concat(copies)
end

function request()
  return batch
end
