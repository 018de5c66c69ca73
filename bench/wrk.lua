-- wrk script for bench/run.py: one scenario, chosen by environment variables.
--
--   BENCH_SCENARIO  health | me | items | create_item | login | mix | recovery
--   BENCH_PREFIX    the API prefix, e.g. /api/v1
--   BENCH_TOKEN     a bearer token (every scenario but health, login and recovery)
--   BENCH_LOGIN     username=...&password=... (login only)
--   BENCH_RECOVERY  {"email": ...} (recovery only: POST /auth/password-recovery)
--
-- A fixed request is set once on `wrk` (wrk then sends it as is, the fastest way);
-- only the mix defines `request()`, which picks a request per call.
-- `done()` prints one line, "BENCH_RESULT {json}", that run.py reads.

local scenario = os.getenv("BENCH_SCENARIO")
local prefix = os.getenv("BENCH_PREFIX") or "/api/v1"
local token = os.getenv("BENCH_TOKEN") or ""

local auth = { ["Authorization"] = "Bearer " .. token }
local json_auth = { ["Authorization"] = "Bearer " .. token, ["Content-Type"] = "application/json" }
local item_body = '{"title": "Bench item", "description": "Written by bench/run.py"}'

if scenario == "health" then
  wrk.path = "/health"
elseif scenario == "me" then
  wrk.path = prefix .. "/users/me"
  wrk.headers = auth
elseif scenario == "items" then
  wrk.path = prefix .. "/items/?limit=20"
  wrk.headers = auth
elseif scenario == "create_item" then
  wrk.method = "POST"
  wrk.path = prefix .. "/items/"
  wrk.headers = json_auth
  wrk.body = item_body
elseif scenario == "login" then
  wrk.method = "POST"
  wrk.path = prefix .. "/auth/login"
  wrk.headers = { ["Content-Type"] = "application/x-www-form-urlencoded" }
  wrk.body = os.getenv("BENCH_LOGIN")
elseif scenario == "recovery" then
  wrk.method = "POST"
  wrk.path = prefix .. "/auth/password-recovery"
  wrk.headers = { ["Content-Type"] = "application/json" }
  wrk.body = os.getenv("BENCH_RECOVERY")
elseif scenario == "mix" then
  -- 90% reads (half GET /users/me, half GET /items/?limit=20), 10% POST /items/.
  local requests = {}

  function init(args)
    requests.me = wrk.format("GET", prefix .. "/users/me", auth)
    requests.items = wrk.format("GET", prefix .. "/items/?limit=20", auth)
    requests.create = wrk.format("POST", prefix .. "/items/", json_auth, item_body)
    math.randomseed(os.time())
  end

  function request()
    local roll = math.random(100)
    if roll <= 45 then
      return requests.me
    elseif roll <= 90 then
      return requests.items
    end
    return requests.create
  end
else
  error("unknown BENCH_SCENARIO: " .. tostring(scenario))
end

function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, ' ..
    '"socket_errors": %d, "http_errors": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    errors.connect + errors.read + errors.write + errors.timeout, errors.status
  ))
end
