-- wrk script: POST /v1/offboardings, each request deactivating another user, companies in
-- turn (the same requests as `offboard-lab bench enqueue`'s own load generator).
--
--   WRK_TENANTS='company,actor,target,first_user,users;...' WRK_THREADS=2 \
--     wrk -t2 -c64 -d9s --latency -s wrk-enqueue.lua http://127.0.0.1:8080
--
-- Each tenant is a company, an admin who acts, the user who receives the items, and its
-- leaving users: `users` consecutive ids from `first_user`. Request i goes to tenant
-- i mod n and deactivates its (i div n)-th user; threads interleave i. Past the last user a
-- tenant's ids wrap, and the repeated keys come back 202 as replays (counted apart by the
-- bench through the ledger). WRK_TOKEN overrides the development token.

local tenants = {}
for c, a, t, f, n in string.gmatch(os.getenv("WRK_TENANTS") or "",
        "(%d+),(%d+),(%d+),(%d+),(%d+)") do
    tenants[#tenants + 1] = { c, a, t, tonumber(f), tonumber(n) }
end
local threads = tonumber(os.getenv("WRK_THREADS") or "1")
local token = os.getenv("WRK_TOKEN") or "offboard-dev-token"

local next_thread = 0
function setup(thread)
    thread:set("thread_index", next_thread)
    next_thread = next_thread + 1
end

local counter = 0
function request()
    local i = counter * threads + (thread_index or 0)
    counter = counter + 1
    local tenant = tenants[(i % #tenants) + 1]
    local user = tenant[4] + (math.floor(i / #tenants) % tenant[5])
    local body = string.format(
        '{"company_id":%s,"user_id":%d,"actor_user_id":%s,"action":"deactivate",' ..
        '"transfer":{"default":{"mode":"single","targets":[{"user_id":%s}]}}}',
        tenant[1], user, tenant[2], tenant[3])
    return wrk.format("POST", "/v1/offboardings", {
        ["Content-Type"] = "application/json",
        ["Authorization"] = "Bearer " .. token,
        ["Idempotency-Key"] = "wrk-" .. user,
    }, body)
end
