-- PowerDNS lua2 backend (Debian pdns-backend-lua2, API 2): one zone whose name
-- `www` answers with the edges whose admin /healthz passes, through a LUA
-- record and `ifurlup`. An edge withdrawing on SIGTERM answers /healthz 503 for
-- `drain.delay` while it still serves, so PowerDNS drops it from the answer
-- (within `lua-health-checks-interval` plus the record's TTL) before it stops.
--
-- Edit the four settings below; every edge's admin listener must listen on
-- the healthz port on its own address (`admin = "192.0.2.10:9901"`), because
-- ifurlup asks each address for the same URL.

local zone = "example.net."
local name = "www.example.net."
local edges = { "192.0.2.10", "198.51.100.10" }
local healthz = "http://www.example.net:9901/healthz"

-- Short TTLs, so resolvers come back soon after an edge is dropped.
local ttl = 5

local function quoted_list(items)
  local out = {}
  for _, item in ipairs(items) do
    out[#out + 1] = "'" .. item .. "'"
  end
  return "{" .. table.concat(out, ",") .. "}"
end

-- selector='all': every edge that is up, not one of them at random; when
-- none is up, PowerDNS answers with all of them rather than nothing.
local www = "A \"ifurlup('" .. healthz .. "', " .. quoted_list(edges)
  .. ", {selector='all'})\""

local records = {
  [zone] = {
    { type = "SOA", content = "ns1." .. zone .. " hostmaster." .. zone .. " 1 3600 600 86400 " .. ttl },
    { type = "NS", content = "ns1." .. zone },
  },
  [name] = {
    { type = "LUA", content = www },
  },
}

-- The records of `qname` of type `qtype` (PowerDNS mostly asks for ANY and
-- picks); a LUA record also answers for the type its content starts with.
function dns_lookup(qtype, qname, domain_id, ctx)
  local want = qtype:getName()
  local out = {}
  for _, r in ipairs(records[tostring(qname):lower()] or {}) do
    local lua_for = r.type == "LUA" and r.content:match("^(%S+)")
    if want == "ANY" or r.type == want or lua_for == want then
      out[#out + 1] = { name = qname, type = r.type, content = r.content, ttl = ttl, domain_id = 1 }
    end
  end
  return out
end

function dns_get_domaininfo(domain)
  if tostring(domain):lower() == zone then
    return { id = 1, kind = "NATIVE", serial = 1 }
  end
  return false
end
