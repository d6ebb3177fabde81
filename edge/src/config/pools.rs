//! Reading `[pools.NAME]`: endpoints (static, weighted, or from DNS), timeouts,
//! balancing, retries, breaker, limits and health checks.

use std::path::{Path, PathBuf};
use std::time::Duration;

use upstream::discovery::{DnsConfig, RecordKind};
use upstream::{EndpointAddr, HealthCheck, Policy, PoolConfig, Protocol};

use super::walk::{Cx, FromToml, Table};
use super::{at_least, positive, Pool};

pub(super) fn read_pools(cx: &mut Cx<'_>, root: &mut Table<'_>, base: &Path) -> Vec<Pool> {
    let mut pools = Vec::new();
    for (name, mut t) in root.named_tables(cx, "pools") {
        let mut pool = PoolConfig::new(&name, Vec::new());
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
        let dns = read_dns(cx, &mut t);
        match (urls.is_empty(), dns.is_some()) {
            (true, false) => {
                let line = t.line_of(cx, "endpoints");
                cx.error(line, &t.path("endpoints"), "a pool needs endpoints or dns");
            }
            (false, true) => {
                let line = t.line_of(cx, "dns");
                cx.error(line, &t.path("dns"), "give endpoints or dns, not both");
            }
            _ => {}
        }
        pool.protocol = t.opt(cx, "protocol").unwrap_or(pool.protocol);
        pool.connect_timeout = positive(cx, &mut t, "connect_timeout", pool.connect_timeout);
        pool.response_timeout = positive(cx, &mut t, "response_timeout", pool.response_timeout);
        pool.idle_timeout = positive(cx, &mut t, "idle_timeout", pool.idle_timeout);
        read_resilience(cx, &mut t, &mut pool);
        pool.health_check = read_health_check(cx, &mut t);
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
        });
    }
    pools
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
            Some(other) => Err(format!("expected \"h2\" or \"h1\", found {other:?}")),
            None => Err(format!(
                "expected \"h2\" or \"h1\", found {}",
                v.type_name()
            )),
        }
    }
}
