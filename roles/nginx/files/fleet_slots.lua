-- fleet's slot table: which slot of each service nginx sends the next request to.
--
-- Every service's live port sits in the shared dict `fleet_slots`, read per request by the
-- balancer of its upstream. init() fills it from the deploy state files whenever nginx starts or
-- reloads (the state on disk is the truth, so a restart or a reboot lands on the live slot);
-- control() lets the slot engine change it through a root-only unix socket. A switch is one
-- dict write: nginx is not reloaded and no client or upstream connection is closed.
--
-- Maintenance works the same way: "maintenance:<service>" holds the Retry-After (seconds) of a
-- service in maintenance, filled by init() from the state's `maintenance` and set or cleared
-- through control(); maintenance() (access_by_lua of the service's locations) answers its
-- requests with 503 and the service's maintenance page, except for the exempt clients.
--
-- A canary works the same way too: "canary:<service>" holds "<port> <weight>" while a deploy's
-- canary step sends `weight` percent of the service's requests to the new slot <port>, filled by
-- init() from the state's `weight` (and its pending move's to_port) and set or cleared through
-- control(). The split is exact, not random: "count:<service>" counts the service's requests
-- (an atomic incr, shared by all workers), and request n (from 1) goes to the canary when
-- floor(n*w/100) > floor((n-1)*w/100), so after any n requests the canary served floor(n*w/100).
-- Setting a weight restarts the count; a switch (PUT /slots) ends the canary.
local cjson = require "cjson.safe"

local _M = {}

local DICT = "fleet_slots"

-- The live port, the maintenance Retry-After (nil when not in maintenance) and the canary
-- ("<port> <weight>", nil without one) of a state file.
local function live_port_from(path)
    local file = io.open(path, "r")
    if not file then
        return nil, "no state file"
    end
    local text = file:read("*a")
    file:close()
    local state = cjson.decode(text)
    local port = type(state) == "table" and tonumber(state.live_port) or nil
    if not port then
        return nil, "no live_port in it"
    end
    local maintenance = type(state.maintenance) == "table" and tonumber(state.maintenance.retry_after) or nil
    local weight = tonumber(state.weight)
    local to_port = type(state.pending) == "table" and tonumber(state.pending.to_port) or nil
    local canary = nil
    if weight and to_port and weight >= 1 and weight <= 99 then
        canary = to_port .. " " .. weight
    end
    return port, nil, maintenance, canary
end

-- init_by_lua (master process): services maps each service nginx routes to its blue port.
function _M.init(state_dir, services)
    local dict = ngx.shared[DICT]
    for service, blue in pairs(services) do
        dict:set("slots:" .. service, blue .. " " .. (blue + 1000))
        local port, err, maintenance, canary = live_port_from(state_dir .. "/" .. service .. ".json")
        -- The dict outlives a reload: a maintenance the state no longer records goes.
        if maintenance then
            dict:set("maintenance:" .. service, maintenance)
        else
            dict:delete("maintenance:" .. service)
        end
        -- The same for a canary: the state's weight comes back after a restart, a finished one goes.
        if port and canary then
            if dict:get("canary:" .. service) ~= canary then
                dict:set("canary:" .. service, canary)
                dict:set("count:" .. service, 0)
            end
        else
            dict:delete("canary:" .. service)
        end
        if port then
            dict:set(service, port)
        elseif not dict:get(service) then
            -- No state yet (first converge): the slot the service role starts first.
            ngx.log(ngx.WARN, "fleet: ", service, ": ", err, " in ", state_dir, ", routing to blue slot ", blue)
            dict:set(service, blue)
        end
    end
end

-- The canary's port for this request, or nil: request n goes to the canary when
-- floor(n*w/100) > floor((n-1)*w/100), n from an atomic count shared by the workers.
local function canary_port(dict, service)
    local canary = dict:get("canary:" .. service)
    if not canary then
        return nil
    end
    local port, weight = canary:match("^(%d+) (%d+)$")
    local n = dict:incr("count:" .. service, 1, 0)
    if not n or not weight then
        return nil
    end
    weight = tonumber(weight)
    if math.floor(n * weight / 100) > math.floor((n - 1) * weight / 100) then
        return tonumber(port)
    end
    return nil
end

-- balancer_by_lua of the service's upstream.
function _M.balance(service)
    local dict = ngx.shared[DICT]
    local port = dict:get(service)
    if port then
        port = canary_port(dict, service) or port
    end
    if not port then
        ngx.log(ngx.ERR, "fleet: no live slot known for ", service)
        return ngx.exit(502)
    end
    local ok, err = require("ngx.balancer").set_current_peer("127.0.0.1", port)
    if not ok then
        ngx.log(ngx.ERR, "fleet: cannot route ", service, " to ", port, ": ", err)
        return ngx.exit(502)
    end
end

-- access_by_lua of each location of the service (after limit_req, before proxy_pass): while the
-- service is in maintenance, 503 with Retry-After and the page at `page` (read per answer, so a
-- new page needs no reload). `exempt` is "1" for clients that still reach the service (the host
-- itself: the deploy's verification through nginx, the health checker).
function _M.maintenance(service, page, exempt)
    local retry_after = ngx.shared[DICT]:get("maintenance:" .. service)
    if not retry_after or exempt == "1" then
        return
    end
    local body = "<!doctype html><title>Maintenance</title><p>" .. service
                 .. " is down for maintenance. Please try again later.</p>\n"
    local file = io.open(page, "r")
    if file then
        body = file:read("*a") or body
        file:close()
    end
    ngx.status = 503
    ngx.header["Retry-After"] = retry_after
    ngx.header["Content-Type"] = "text/html; charset=utf-8"
    ngx.header["Cache-Control"] = "no-store"
    ngx.print(body)
    return ngx.exit(ngx.HTTP_OK)
end

local function answer(status, body)
    ngx.status = status
    ngx.header["Content-Type"] = "application/json"
    ngx.say(cjson.encode(body))
    return ngx.exit(status)
end

local function maintenance_control(dict, method, uri)
    if uri == "/maintenance" and method == "GET" then
        local found = {}
        for _, key in ipairs(dict:get_keys(0)) do
            local service = key:match("^maintenance:(.+)$")
            if service then
                found[service] = dict:get(key)
            end
        end
        return answer(200, found)
    end
    local service = uri:match("^/maintenance/([%w._-]+)$")
    if not service or (method ~= "PUT" and method ~= "DELETE") then
        return answer(404, { error = method .. " " .. uri .. ": GET /maintenance, PUT /maintenance/<service> "
                                     .. "(body: Retry-After seconds) or DELETE /maintenance/<service>" })
    end
    if not dict:get("slots:" .. service) then
        return answer(404, { error = "nginx routes no service named " .. service })
    end
    local key = "maintenance:" .. service
    local previous = dict:get(key)
    if method == "DELETE" then
        dict:delete(key)
        ngx.log(ngx.NOTICE, "fleet: ", service, " out of maintenance")
        return answer(200, { service = service, previous = previous })
    end
    ngx.req.read_body()
    local seconds = tonumber(ngx.req.get_body_data() or "")
    if not seconds or seconds < 1 or seconds ~= math.floor(seconds) then
        return answer(400, { error = "the body must be the Retry-After in whole seconds (at least 1), not "
                                     .. tostring(ngx.req.get_body_data()) })
    end
    local ok, err = dict:set(key, seconds)
    if not ok then
        return answer(500, { error = "cannot store the maintenance: " .. err })
    end
    ngx.log(ngx.NOTICE, "fleet: ", service, " in maintenance (Retry-After ", seconds, ")")
    return answer(200, { service = service, retry_after = seconds, previous = previous })
end

local function canary_control(dict, method, uri)
    if uri == "/canary" and method == "GET" then
        local found = {}
        for _, key in ipairs(dict:get_keys(0)) do
            local service = key:match("^canary:(.+)$")
            if service then
                local port, weight = dict:get(key):match("^(%d+) (%d+)$")
                found[service] = { port = tonumber(port), weight = tonumber(weight),
                                   requests = dict:get("count:" .. service) or 0 }
            end
        end
        return answer(200, found)
    end
    local service = uri:match("^/canary/([%w._-]+)$")
    if not service or (method ~= "PUT" and method ~= "DELETE") then
        return answer(404, { error = method .. " " .. uri .. ": GET /canary, PUT /canary/<service> "
                                     .. "(body: \"<port> <weight>\") or DELETE /canary/<service>" })
    end
    local slots = dict:get("slots:" .. service)
    if not slots then
        return answer(404, { error = "nginx routes no service named " .. service })
    end
    local key = "canary:" .. service
    local previous = dict:get(key)
    if method == "DELETE" then
        dict:delete(key)
        ngx.log(ngx.NOTICE, "fleet: ", service, " canary ended (was ", previous, ")")
        return answer(200, { service = service, previous = previous })
    end
    ngx.req.read_body()
    local body = ngx.req.get_body_data() or ""
    local port, weight = body:match("^%s*(%d+)%s+(%d+)%s*$")
    port, weight = tonumber(port), tonumber(weight)
    local blue, green = slots:match("^(%d+) (%d+)$")
    local live = dict:get(service)
    if not port or (port ~= tonumber(blue) and port ~= tonumber(green)) or port == live
            or not weight or weight < 1 or weight > 99 then
        return answer(400, { error = "the body must be \"<port> <weight>\": the idle slot of " .. service .. " ("
                                     .. blue .. " or " .. green .. ", not the live " .. tostring(live)
                                     .. ") and a weight from 1 to 99 percent, not " .. body })
    end
    local ok, err = dict:set("count:" .. service, 0)
    if ok then
        ok, err = dict:set(key, port .. " " .. weight)
    end
    if not ok then
        return answer(500, { error = "cannot store the canary: " .. err })
    end
    ngx.log(ngx.NOTICE, "fleet: ", service, " canary: ", weight, "% to slot ", port, " (was ", previous, ")")
    return answer(200, { service = service, port = port, weight = weight, previous = previous })
end

-- content_by_lua of the control server:
--   GET /slots            every service's live port
--   PUT /slots/<service>  body: one of the service's two slot ports
--   GET /maintenance, PUT /maintenance/<service> (body: Retry-After seconds), DELETE /maintenance/<service>
--   GET /canary, PUT /canary/<service> (body: "<port> <weight>"), DELETE /canary/<service>
function _M.control()
    local dict = ngx.shared[DICT]
    local method, uri = ngx.req.get_method(), ngx.var.uri
    if uri == "/maintenance" or uri:find("^/maintenance/") then
        return maintenance_control(dict, method, uri)
    end
    if uri == "/canary" or uri:find("^/canary/") then
        return canary_control(dict, method, uri)
    end
    if uri == "/slots" and method == "GET" then
        local slots = {}
        for _, key in ipairs(dict:get_keys(0)) do
            if not key:find(":", 1, true) then
                slots[key] = dict:get(key)
            end
        end
        return answer(200, slots)
    end
    local service = uri:match("^/slots/([%w._-]+)$")
    if not service then
        return answer(404, { error = "unknown path " .. uri .. ": GET /slots or PUT /slots/<service>" })
    end
    if method ~= "PUT" then
        return answer(405, { error = "use PUT /slots/<service> with a slot port as the body" })
    end
    local slots = dict:get("slots:" .. service)
    if not slots then
        return answer(404, { error = "nginx routes no service named " .. service })
    end
    ngx.req.read_body()
    local port = tonumber(ngx.req.get_body_data() or "")
    local blue, green = slots:match("^(%d+) (%d+)$")
    if port ~= tonumber(blue) and port ~= tonumber(green) then
        return answer(400, { error = service .. " has slots " .. blue .. " and " .. green .. ", not "
                                     .. tostring(ngx.req.get_body_data()) })
    end
    local previous = dict:get(service)
    local ok, err = dict:set(service, port)
    if not ok then
        return answer(500, { error = "cannot store the slot: " .. err })
    end
    -- A switch ends a canary (after the live slot is set: every request goes to one of the two
    -- slots the deploy chose, never to a third).
    dict:delete("canary:" .. service)
    ngx.log(ngx.NOTICE, "fleet: ", service, " now routed to slot ", port, " (was ", previous, ")")
    return answer(200, { service = service, port = port, previous = previous })
end

return _M
