-- wrk script: GET /items/<id> with a Zipf-like key mix over ITEMS items (exponent ZIPF_S),
-- the hottest ranks scattered over the id range; prints machine-readable figures at the end.
local n = tonumber(os.getenv("ITEMS") or "10000")
local s = tonumber(os.getenv("ZIPF_S") or "1.0")
local cdf = {}

init = function(args)
  -- A seed per thread: wrk runs init in each thread's own Lua state.
  local addr = tonumber(tostring({}):match("0x(%x+)") or "0", 16) or 0
  math.randomseed(os.time() + addr % 1000003)
  local sum = 0
  for i = 1, n do
    sum = sum + 1 / (i ^ s)
    cdf[i] = sum
  end
  for i = 1, n do
    cdf[i] = cdf[i] / sum
  end
end

request = function()
  local u = math.random()
  local lo, hi = 1, n
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if cdf[mid] < u then lo = mid + 1 else hi = mid end
  end
  -- 7919 is prime and does not divide n = 10000: a bijection of ranks onto ids 1..n.
  local id = ((lo * 7919) % n) + 1
  return wrk.format("GET", "/items/" .. id)
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT requests=%d duration_us=%d socket_errors=%d non2xx=%d\n",
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status))
  for _, p in ipairs({ 50, 90, 99, 99.9 }) do
    io.write(string.format("PCT p%s %d\n", p, latency:percentile(p)))
  end
end
