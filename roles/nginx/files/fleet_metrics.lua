-- fleet's request figures: each service's requests, 5xx answers and latency, counted by nginx.
--
-- record() runs in the log phase of every request (log_by_lua at http level, conf.d/
-- fleet-metrics.conf) and counts the request of a location that names its service
-- (`set $fleet_service <name>;` in the service's locations: site.conf.j2, default-server.conf.j2).
-- The ACME challenge locations, /nginx-health, the HTTPS redirect (its `return` comes before the
-- `set`) and the control server name no service and are not counted.
--
--   a request  every request answered in a service's location: proxied to a slot, refused by the
--              rate limit (429: a request, not a 5xx), or failed by nginx (502/504 when no slot
--              answers: a 5xx). A client that goes away before the answer is logged 499: a request.
--   a 5xx      a status from 500 to 599, from the slot or from nginx.
--   latency    $request_time: from the request's first byte to the answer's last byte handed to
--              the client's socket, what the client waits for. It exists for every request (429s
--              and 502s have no $upstream_response_time) and includes nginx's own part (the
--              connection to the slot, a retry); the operators' target ("under 100 ms") is the
--              client's.
--
-- Kept in lua_shared_dict fleet_metrics, per service (numbers; keys "<kind>|<service>|..."):
--   totals   t|svc|n, t|svc|e, t|svc|s (sum of latencies), t|svc|b<i> (latency bucket i): since
--            nginx started, never expire; the Prometheus counters and the exact deltas a deploy's
--            watch takes (read the totals twice: the difference is exactly what came between).
--   recent   r|svc|<start>|n, e, s, b<i>: one window per RECENT_STEP (10 s) seconds, kept 15
--            minutes (ttl); a reading sums the windows of the last N seconds (N <= 600).
--   day      d|svc|<start>|n, e: one window per DAY_STEP (5 min), kept 24 h and 10 min; 24-hour
--            availability = 1 - 5xx / requests over the last 289 windows.
-- Memory: a dict entry takes 128 bytes of the slab (node and key of about 100 bytes, rounded
-- up). Worst case per service, every latency bucket hit in every window: 17 totals
-- + 90 recent windows x 17 + 290 day windows x 2 = 2127 entries = 272 KB; typical traffic
-- hits 2 or 3 buckets (about 760 entries, 100 KB). nginx_metrics_dict_size (10m) holds 20
-- services at their worst with room to spare; when it is full, nginx evicts the least recently
-- used entries (expired ones first), so the oldest windows go before anything recent.
--
-- The dict lives in shared memory: it survives a reload (HUP: site.yml, certbot's renewal) but
-- not a restart or a reboot, which start every figure at 0 ("started" says since when). A reload
-- that changes the dict's size also starts it anew.
local cjson = require "cjson.safe"

local _M = {}

local DICT = "fleet_metrics"
-- Upper bounds (seconds) of the latency buckets, the Prometheus histogram's `le`; the last
-- bucket, above 10 s, is +Inf. 100 ms, the operators' target, is a bound.
local BOUNDS = { 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10 }
local BUCKETS = #BOUNDS + 1
local RECENT_STEP = 10
local RECENT_TTL = 900
local RECENT_MAX = 600
local RECENT_DEFAULT = 300
local DAY_STEP = 300
local DAY_WINDOWS = 289 -- 24 h of whole windows, plus the current one
local DAY_TTL = DAY_WINDOWS * DAY_STEP + DAY_STEP

_M.BOUNDS = BOUNDS

local function bucket_of(seconds)
    for i = 1, #BOUNDS do
        if seconds <= BOUNDS[i] then
            return i
        end
    end
    return BUCKETS
end

-- init_by_lua (master process, at every start and reload): the names of the services nginx
-- routes now (the figures of a service no longer routed are no longer served, and expire).
function _M.init(names)
    local dict = ngx.shared[DICT]
    dict:set("services", table.concat(names, " "))
    dict:add("started", os.time()) -- kept across reloads: only a restart empties the dict
end

-- A full dict would otherwise say so on every request: at most once a minute per worker.
local warned = 0

local function count(dict, key, value, ttl)
    local _, err, forcible = dict:incr(key, value, 0, ttl)
    if (err or forcible) and ngx.time() - warned >= 60 then
        warned = ngx.time()
        ngx.log(ngx.WARN, "fleet metrics: ", err and ("cannot count " .. key .. ": " .. err)
                or ("lua_shared_dict " .. DICT .. " is full, older figures evicted"),
                " (raise nginx_metrics_dict_size)")
    end
end

-- log_by_lua (http level): count this request for its service, if its location names one.
function _M.record()
    local service = ngx.var.fleet_service
    if not service or service == "" then
        return
    end
    local status = tonumber(ngx.var.status) or 0
    local seconds = tonumber(ngx.var.request_time) or 0
    local failed = status >= 500 and status <= 599
    local bucket = "b" .. bucket_of(seconds)
    local now = ngx.time()
    local dict = ngx.shared[DICT]
    local total = "t|" .. service .. "|"
    local recent = "r|" .. service .. "|" .. (now - now % RECENT_STEP) .. "|"
    local day = "d|" .. service .. "|" .. (now - now % DAY_STEP) .. "|"
    count(dict, total .. "n", 1, 0)
    count(dict, total .. "s", seconds, 0)
    count(dict, total .. bucket, 1, 0)
    count(dict, recent .. "n", 1, RECENT_TTL)
    count(dict, recent .. "s", seconds, RECENT_TTL)
    count(dict, recent .. bucket, 1, RECENT_TTL)
    count(dict, day .. "n", 1, DAY_TTL)
    if failed then
        count(dict, total .. "e", 1, 0)
        count(dict, recent .. "e", 1, RECENT_TTL)
        count(dict, day .. "e", 1, DAY_TTL)
    end
end

-- Requests, 5xx, latency sum and buckets under the key prefix `prefix` (a window or the totals);
-- nil when the window saw no request.
local function figures(dict, prefix, into)
    local requests = dict:get(prefix .. "n")
    if not requests then
        return
    end
    into.requests = into.requests + requests
    into.errors = into.errors + (dict:get(prefix .. "e") or 0)
    if into.buckets then
        into.seconds_sum = into.seconds_sum + (dict:get(prefix .. "s") or 0)
        for i = 1, BUCKETS do
            into.buckets[i] = into.buckets[i] + (dict:get(prefix .. "b" .. i) or 0)
        end
    end
end

local function histogram()
    local buckets = {}
    for i = 1, BUCKETS do
        buckets[i] = 0
    end
    return { requests = 0, errors = 0, seconds_sum = 0, buckets = buckets }
end

-- One service's figures: since nginx started, over the last `window` seconds (whole windows of
-- RECENT_STEP, the current one included) and over the last 24 hours.
local function service_figures(dict, service, window, now, started)
    local total = histogram()
    figures(dict, "t|" .. service .. "|", total)

    local recent = histogram()
    local current = now - now % RECENT_STEP
    local windows = math.ceil(window / RECENT_STEP)
    local from = current - (windows - 1) * RECENT_STEP
    for start = from, current, RECENT_STEP do
        figures(dict, "r|" .. service .. "|" .. start .. "|", recent)
    end
    recent.from = math.max(from, started)

    local day = { requests = 0, errors = 0 }
    local day_current = now - now % DAY_STEP
    local day_from = day_current - (DAY_WINDOWS - 1) * DAY_STEP
    for start = day_from, day_current, DAY_STEP do
        figures(dict, "d|" .. service .. "|" .. start .. "|", day)
    end
    day.from = math.max(day_from, started)
    return { total = total, recent = recent, day = day }
end

local function answer(status, body)
    ngx.status = status
    ngx.header["Content-Type"] = "application/json"
    ngx.say(cjson.encode(body))
    return ngx.exit(status)
end

-- content_by_lua of the control server (fleet_slots.control() hands /metrics over):
--   GET /metrics[?window=N]            every service nginx routes
--   GET /metrics/<service>[?window=N]  one service (cheap: a deploy's watch reads this)
-- window: the recent window in seconds, 1 to 600, default 300, rounded up to whole 10 s windows
-- (the current one included); "from" says where each window starts (epoch seconds; never before
-- "started", when the figures began). The derived figures (rate, 5xx share, percentiles) are the
-- reader's: fleet_slots.metrics in the slot engine's package.
function _M.control()
    if ngx.req.get_method() ~= "GET" then
        return answer(405, { error = "use GET /metrics or GET /metrics/<service>" })
    end
    local dict = ngx.shared[DICT]
    local uri = ngx.var.uri
    local window = tonumber(ngx.var.arg_window or RECENT_DEFAULT)
    if not window or window < 1 or window > RECENT_MAX then
        return answer(400, { error = "window must be a number of seconds from 1 to " .. RECENT_MAX })
    end
    local routed = {}
    for name in (dict:get("services") or ""):gmatch("%S+") do
        routed[name] = true
    end
    local names = {}
    if uri == "/metrics" then
        for name in pairs(routed) do
            names[#names + 1] = name
        end
    else
        local service = uri:match("^/metrics/([%w._-]+)$")
        if not service then
            return answer(404, { error = "unknown path " .. uri .. ": GET /metrics or /metrics/<service>" })
        end
        if not routed[service] then
            return answer(404, { error = "nginx routes no service named " .. service })
        end
        names[1] = service
    end
    ngx.update_time()
    local now = ngx.time()
    local started = dict:get("started") or now
    local services = {}
    for _, name in ipairs(names) do
        services[name] = service_figures(dict, name, window, now, started)
    end
    local bounds = {}
    for i, bound in ipairs(BOUNDS) do
        bounds[i] = bound
    end
    return answer(200, { now = ngx.now(), started = started, window = window, recent_step = RECENT_STEP,
                         day_seconds = (DAY_WINDOWS - 1) * DAY_STEP, bounds = bounds, services = services })
end

return _M
