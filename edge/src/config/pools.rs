//! Reading `[pools.NAME]`: endpoints (static, weighted, or from DNS), timeouts,
//! balancing, retries, breaker, limits and health checks.

use std::path::{Path, PathBuf};
use std::time::Duration;

use upstream::discovery::{DnsConfig, RecordKind};
use upstream::{EndpointAddr, HealthCheck, Policy, PoolConfig, Protocol};

use super::walk::{Cx, FromToml, Table};
use super::{at_least, positive, Geo, Pool};

/// The placeholder a pool's DNS name carries to be looked up once per region.
const REGION_PLACEHOLDER: &str = "{region}";

pub(super) fn read_pools(
    cx: &mut Cx<'_>,
    root: &mut Table<'_>,
    base: &Path,
    geo: Option<&Geo>,
) -> Vec<Pool> {
    let mut pools = Vec::new();
    for (name, mut t) in root.named_tables(cx, "pools") {
        let mut pool = PoolConfig::new(&name, Vec::new());
        let urls = read_endpoints(cx, &mut t, &mut pool);
        let mut dns = read_dns(cx, &mut t);
        let mut regional_dns = Vec::new();
        let regions_line = t.line_of(cx, "regions");
        let regions = read_regions(cx, &mut t, geo, &mut pool, &mut regional_dns);
        if let Some(geo) = geo {
            pool.overprovisioning =
                geo::spillover::Overprovisioning::from_threshold(geo.spillover_threshold)
                    .unwrap_or_default();
        }
        // `dns.name = "{region}.api.internal"`: one lookup per region.
        if let Some(template) = dns.take_if(|d| d.name.contains(REGION_PLACEHOLDER)) {
            match geo {
                Some(geo) if !regions => {
                    for (id, region) in geo.regions.iter().enumerate() {
                        let mut d = template.clone();
                        d.name = template.name.replace(REGION_PLACEHOLDER, &region.id);
                        if let Ok(id) = upstream::RegionId::try_from(id) {
                            regional_dns.push((id, d));
                        }
                    }
                }
                Some(_) => {
                    let line = t.line_of(cx, "dns");
                    cx.error(
                        line,
                        &t.path("dns.name"),
                        "give a {region} name or per-region tables, not both",
                    );
                }
                None => {
                    let line = t.line_of(cx, "dns");
                    cx.error(
                        line,
                        &t.path("dns.name"),
                        "{region} needs a [geo] table listing the regions",
                    );
                }
            }
        }
        let regional = regions || !regional_dns.is_empty();
        match (urls, dns.is_some(), regional) {
            (false, false, false) => {
                let line = t.line_of(cx, "endpoints");
                cx.error(
                    line,
                    &t.path("endpoints"),
                    "a pool needs endpoints, dns or regions",
                );
            }
            (true, true, _) => {
                let line = t.line_of(cx, "dns");
                cx.error(line, &t.path("dns"), "give endpoints or dns, not both");
            }
            (true, _, true) | (_, true, true) => {
                cx.error(
                    regions_line,
                    &t.path("regions"),
                    "a pool spread over regions lists its endpoints (or dns) per region, not at the top",
                );
            }
            _ => {}
        }
        pool.protocol = t.opt(cx, "protocol").unwrap_or(pool.protocol);
        if pool.protocol == Protocol::H3 {
            let plain = pool
                .endpoints
                .iter()
                .find(|e| !e.tls)
                .map(|e| e.to_string());
            let plain_dns = || {
                dns.iter()
                    .chain(regional_dns.iter().map(|(_, d)| d))
                    .find(|d| !d.tls)
                    .map(|d| format!("dns {:?} (tls = false)", d.name))
            };
            if let Some(plain) = plain.or_else(plain_dns) {
                let line = t.line_of(cx, "protocol");
                cx.error(
                    line,
                    &t.path("protocol"),
                    format!("h3 runs over QUIC, which is always TLS: {plain} must be https:// (or dns tls = true)"),
                );
            }
        }
        pool.connect_timeout = positive(cx, &mut t, "connect_timeout", pool.connect_timeout);
        pool.response_timeout = positive(cx, &mut t, "response_timeout", pool.response_timeout);
        pool.idle_timeout = positive(cx, &mut t, "idle_timeout", pool.idle_timeout);
        read_resilience(cx, &mut t, &mut pool);
        pool.hedge = super::hedge::read_hedge(cx, &mut t);
        pool.health_check = read_health_check(cx, &mut t);
        let sticky = super::sticky::read_sticky(cx, &mut t, base);
        // A header or client-address key places users by consistent hashing.
        pool.hash_keys = sticky
            .as_ref()
            .is_some_and(|s| s.key != super::StickyKey::Cookie);
        let ca = t.opt::<PathBuf>(cx, "ca").map(|p| base.join(p));
        if let Some(ca) = &ca {
            if let Err(e) = std::fs::metadata(ca) {
                let line = t.line_of(cx, "ca");
                cx.error(
                    line,
                    &t.path("ca"),
                    format!("cannot read {}: {e}", ca.display()),
                );
            }
        }
        t.finish(cx);
        pools.push(Pool {
            settings: pool,
            ca,
            dns,
            regional_dns,
            sticky,
        });
    }
    pools
}

/// `endpoints = [...]` into `pool`; whether any were given.
fn read_endpoints(cx: &mut Cx<'_>, t: &mut Table<'_>, pool: &mut PoolConfig) -> bool {
    let urls: Vec<WeightedUrl> = t.or(cx, "endpoints", Vec::new());
    for entry in &urls {
        match EndpointAddr::parse(&entry.url) {
            Ok(e) => {
                pool.endpoints.push(e);
                pool.weights.push(entry.weight);
            }
            Err(e) => {
                let line = t.line_of(cx, "endpoints");
                cx.error(line, &t.path("endpoints"), format!("{:?}: {e}", entry.url));
            }
        }
    }
    !urls.is_empty()
}

/// `[pools.NAME.regions.REGION]` tables, each with `endpoints` or `dns`: static
/// endpoints go into `pool` with their region, DNS lookups into `regional_dns`.
/// Whether the pool has any region table.
fn read_regions(
    cx: &mut Cx<'_>,
    t: &mut Table<'_>,
    geo: Option<&Geo>,
    pool: &mut PoolConfig,
    regional_dns: &mut Vec<(upstream::RegionId, DnsConfig)>,
) -> bool {
    let tables = t.named_tables(cx, "regions");
    if tables.is_empty() {
        return false;
    }
    for (region, mut r) in tables {
        let id = match geo {
            None => {
                let line = r.line();
                cx.error(
                    line,
                    &t.path("regions"),
                    "regions need a [geo] table listing them",
                );
                None
            }
            Some(geo) => {
                let id = geo.id(&region);
                if id.is_none() {
                    let line = r.line();
                    cx.error(
                        line,
                        &t.path(&format!("regions.{region}")),
                        format!("no region named {region:?} in [geo.regions]"),
                    );
                }
                id
            }
        };
        let before = pool.endpoints.len();
        let urls = read_endpoints(cx, &mut r, pool);
        let dns = read_dns(cx, &mut r);
        match (urls, dns) {
            (false, None) => {
                let line = r.line();
                cx.error(
                    line,
                    &r.path("endpoints"),
                    "a region needs endpoints or dns",
                );
            }
            (true, Some(_)) => {
                let line = r.line_of(cx, "dns");
                cx.error(line, &r.path("dns"), "give endpoints or dns, not both");
            }
            (false, Some(dns)) => regional_dns.extend(id.map(|id| (id, dns))),
            (true, None) => {}
        }
        let added = pool.endpoints.len() - before;
        pool.regions
            .extend(std::iter::repeat_n(id.unwrap_or_default(), added));
        r.finish(cx);
    }
    true
}

/// `dns = { name = ..., kind = "a" | "srv", port, tls, nameservers, ttl_floor, ttl_ceiling, timeout }`.
fn read_dns(cx: &mut Cx<'_>, pool: &mut Table<'_>) -> Option<DnsConfig> {
    let mut t = pool.table(cx, "dns")?;
    let kind = match t.opt::<String>(cx, "kind").as_deref() {
        None | Some("a") => RecordKind::Address,
        Some("srv") => RecordKind::Srv,
        Some(other) => {
            let line = t.line_of(cx, "kind");
            cx.error(
                line,
                &t.path("kind"),
                format!("expected \"a\" or \"srv\", found {other:?}"),
            );
            RecordKind::Address
        }
    };
    let name = t.opt::<String>(cx, "name");
    let port = t.opt::<u16>(cx, "port");
    if name.is_none() {
        let line = t.line();
        cx.error(line, &t.path("name"), "missing (required)");
    }
    if kind == RecordKind::Address && port.is_none() {
        let line = t.line();
        cx.error(
            line,
            &t.path("port"),
            "missing (required for A/AAAA records)",
        );
    }
    let mut dns = match kind {
        RecordKind::Address => {
            DnsConfig::address(name.clone().unwrap_or_default(), port.unwrap_or(0))
        }
        RecordKind::Srv => DnsConfig::srv(name.clone().unwrap_or_default()),
    };
    dns.tls = t.or(cx, "tls", dns.tls);
    dns.nameservers = t.or(cx, "nameservers", dns.nameservers);
    dns.ttl_floor = positive(cx, &mut t, "ttl_floor", dns.ttl_floor);
    dns.ttl_ceiling = positive(cx, &mut t, "ttl_ceiling", dns.ttl_ceiling);
    dns.timeout = positive(cx, &mut t, "timeout", dns.timeout);
    if dns.ttl_ceiling < dns.ttl_floor {
        let line = t.line_of(cx, "ttl_ceiling");
        cx.error(
            line,
            &t.path("ttl_ceiling"),
            "must not be shorter than ttl_floor",
        );
    }
    t.finish(cx);
    name.map(|_| dns)
}

/// `health_check = { path = "/healthz", interval, timeout, healthy, unhealthy }`.
fn read_health_check(cx: &mut Cx<'_>, pool: &mut Table<'_>) -> Option<HealthCheck> {
    let mut t = pool.table(cx, "health_check")?;
    let path = t.opt::<String>(cx, "path");
    match &path {
        Some(p) if p.starts_with('/') => {}
        Some(_) => {
            let line = t.line_of(cx, "path");
            cx.error(line, &t.path("path"), "must start with /");
        }
        None => {
            let line = t.line();
            cx.error(line, &t.path("path"), "missing (required)");
        }
    }
    let mut check = HealthCheck::new(path.clone().unwrap_or_default());
    check.interval = positive(cx, &mut t, "interval", check.interval);
    check.timeout = positive(cx, &mut t, "timeout", check.timeout);
    check.healthy = at_least(cx, &mut t, "healthy", check.healthy, 1);
    check.unhealthy = at_least(cx, &mut t, "unhealthy", check.unhealthy, 1);
    t.finish(cx);
    path.map(|_| check)
}

/// Balancing, retries, breaker and limits of one pool.
fn read_resilience(cx: &mut Cx<'_>, t: &mut Table<'_>, pool: &mut PoolConfig) {
    pool.policy = t.opt(cx, "balancer").unwrap_or(pool.policy);
    pool.max_retries = t.or(cx, "max_retries", pool.max_retries);
    if let Some(ratio) = t.opt::<f64>(cx, "retry_budget") {
        if (0.0..=1.0).contains(&ratio) {
            pool.retry_budget = ratio;
        } else {
            let line = t.line_of(cx, "retry_budget");
            cx.error(line, &t.path("retry_budget"), "must be between 0.0 and 1.0");
        }
    }
    pool.retry_min_per_sec = t.or(cx, "retry_min_per_sec", pool.retry_min_per_sec);
    for code in t.or::<Vec<u16>>(cx, "retry_statuses", Vec::new()) {
        match http::StatusCode::from_u16(code) {
            Ok(s) if s.is_server_error() => pool.retry_statuses.push(s),
            _ => {
                let line = t.line_of(cx, "retry_statuses");
                cx.error(
                    line,
                    &t.path("retry_statuses"),
                    format!("{code} is not a 5xx status"),
                );
            }
        }
    }
    pool.breaker.failures = at_least(cx, t, "breaker_failures", pool.breaker.failures, 1);
    pool.breaker.open_base = positive(cx, t, "breaker_open", pool.breaker.open_base);
    pool.breaker.open_max = positive(cx, t, "breaker_open_max", pool.breaker.open_max);
    if pool.breaker.open_max < pool.breaker.open_base {
        let line = t.line_of(cx, "breaker_open_max");
        cx.error(
            line,
            &t.path("breaker_open_max"),
            "must not be shorter than breaker_open",
        );
    }
    pool.max_requests = at_least(cx, t, "max_requests", pool.max_requests, 1);
    pool.max_pending_connects =
        at_least(cx, t, "max_pending_connects", pool.max_pending_connects, 1);
    if let Some(share) = t.opt::<f64>(cx, "min_available_share") {
        if (0.0..=1.0).contains(&share) {
            pool.min_available_share = share;
        } else {
            let line = t.line_of(cx, "min_available_share");
            cx.error(
                line,
                &t.path("min_available_share"),
                "must be between 0.0 and 1.0",
            );
        }
    }
    pool.max_connections_per_endpoint = at_least(
        cx,
        t,
        "max_connections_per_endpoint",
        pool.max_connections_per_endpoint,
        1,
    );
    pool.connection_queue = t.or(cx, "connection_queue", pool.connection_queue);
    pool.connection_queue_timeout = positive(
        cx,
        t,
        "connection_queue_timeout",
        pool.connection_queue_timeout,
    );
    pool.request_timeout = t.opt::<Duration>(cx, "request_timeout");
    if pool.request_timeout.is_some_and(|d| d.is_zero()) {
        let line = t.line_of(cx, "request_timeout");
        cx.error(
            line,
            &t.path("request_timeout"),
            "must be greater than zero",
        );
    }
}

/// An endpoint entry: `"http://host:port"` or `{ url = "http://host:port", weight = 3 }`.
struct WeightedUrl {
    url: String,
    weight: u32,
}

impl FromToml for WeightedUrl {
    fn from_toml(v: &toml_edit::Value) -> Result<Self, String> {
        if let Some(url) = v.as_str() {
            return Ok(Self {
                url: url.to_owned(),
                weight: 1,
            });
        }
        let t = v.as_inline_table().ok_or_else(|| {
            format!(
                "expected a URL or {{ url, weight }}, found {}",
                v.type_name()
            )
        })?;
        if let Some((key, _)) = t.iter().find(|(k, _)| *k != "url" && *k != "weight") {
            return Err(format!("unknown key {key:?} (expected url, weight)"));
        }
        let url = t
            .get("url")
            .and_then(toml_edit::Value::as_str)
            .ok_or("{ url, weight }: url is missing or not text")?
            .to_owned();
        let weight = match t.get("weight") {
            None => 1,
            Some(w) => u32::from_toml(w).map_err(|e| format!("weight: {e}"))?,
        };
        Ok(Self { url, weight })
    }
}

impl FromToml for Policy {
    fn from_toml(v: &toml_edit::Value) -> Result<Self, String> {
        match v.as_str() {
            Some("least_request") => Ok(Policy::LeastRequest),
                        Some("round_robin") => Ok(Policy::RoundRobin),
                        Some("weighted_round_robin") => Ok(Policy::WeightedRoundRobin),
            Some("consistent_hash") => Ok(Policy::Maglev),
            Some(other) => Err(format!(
                "expected \"least_request\", \"round_robin\", \"weighted_round_robin\" or \"consistent_hash\", found {other:?}"
            )),
            None => Err(format!(
                "expected \"least_request\", \"round_robin\", \"weighted_round_robin\" or \"consistent_hash\", found {}",
                v.type_name()
            )),
        }
    }
}

impl FromToml for Protocol {
    fn from_toml(v: &toml_edit::Value) -> Result<Self, String> {
        match v.as_str() {
            Some("h2") => Ok(Protocol::H2),
            Some("h1") => Ok(Protocol::H1),
            Some("h3") => Ok(Protocol::H3),
            Some(other) => Err(format!(
                "expected \"h2\", \"h1\" or \"h3\", found {other:?}"
            )),
            None => Err(format!(
                "expected \"h2\", \"h1\" or \"h3\", found {}",
                v.type_name()
            )),
        }
    }
}
