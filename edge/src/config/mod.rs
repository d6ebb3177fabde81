//! Configuration: one TOML file (or CLI flags) turned into typed settings.
//!
//! Everything is validated before anything starts: unknown keys, bad values,
//! missing files and dangling pool names are all reported together, each with its
//! key path and line. Only this module knows TOML; the library crates take their
//! own plain config structs.

mod walk;

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use upstream::discovery::{DnsConfig, RecordKind};
use upstream::{EndpointAddr, HealthCheck, Policy, PoolConfig, Protocol};

pub use walk::{ConfigError, ConfigErrors};
use walk::{Cx, FromToml, Table};

/// The whole validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// TLS over TCP (HTTP/1.1, HTTP/2) and QUIC over UDP (HTTP/3) on one address.
    pub listen: SocketAddr,
    /// Plaintext HTTP/1.1 and h2c (prior knowledge).
    pub http_listen: Option<SocketAddr>,
    /// `/healthz` and `/metrics`.
    pub admin: Option<SocketAddr>,
    /// Peers whose `X-Forwarded-For` is extended rather than replaced.
    pub trusted_proxies: Vec<IpNet>,
    /// Tokio worker threads; `None` is one per core.
    pub workers: Option<NonZeroUsize>,
    pub alt_svc: AltSvc,
    pub tls: Tls,
    pub client: Client,
    pub routes: Vec<Route>,
    pub pools: Vec<Pool>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AltSvc {
    pub enabled: bool,
    pub max_age: Duration,
}

#[derive(Clone, Debug)]
pub struct Tls {
    pub handshake_timeout: Duration,
    /// Served by SNI; the first is the default. Empty: a self-signed one is made at start.
    pub certificates: Vec<CertFiles>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Downstream (client-facing) timeouts and limits, the same on h1, h2 and h3.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Client {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_concurrent_streams: u32,
    /// Open TCP client connections at most; `None` is 70% of the open-file limit.
    pub max_connections: Option<usize>,
}

#[derive(Clone, Debug)]
pub struct Route {
    /// Lower-case host without port; `None` matches every host.
    pub host: Option<String>,
    pub path_prefix: String,
    pub pool: String,
}

/// A pool: the upstream crate's own settings, plus what only a file names.
#[derive(Clone, Debug)]
pub struct Pool {
    pub settings: PoolConfig,
    /// PEM CA bundle read into `settings.extra_roots` at start.
    pub ca: Option<PathBuf>,
    /// Endpoints from DNS instead of `settings.endpoints`.
    pub dns: Option<DnsConfig>,
}

pub const DEFAULT_LISTEN: &str = "0.0.0.0:8443";
pub const DEFAULT_ADMIN: &str = "127.0.0.1:9901";
pub const DEFAULT_POOL: &str = "default";

impl Default for Client {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_header_bytes: 32 * 1024,
            max_headers: 100,
            max_concurrent_streams: 100,
            max_connections: None,
        }
    }
}

impl Pool {
    /// A pool with every setting at its default.
    pub fn new(name: &str, endpoints: Vec<EndpointAddr>) -> Self {
        Self {
            settings: PoolConfig::new(name, endpoints),
            ca: None,
            dns: None,
        }
    }

    pub fn name(&self) -> &str {
        &self.settings.name
    }
}

impl Config {
    /// The built-in defaults with one pool and a catch-all route to it.
    pub fn with_upstreams(endpoints: Vec<EndpointAddr>) -> Self {
        Self {
            listen: parse_const(DEFAULT_LISTEN),
            http_listen: None,
            admin: Some(parse_const(DEFAULT_ADMIN)),
            trusted_proxies: Vec::new(),
            workers: None,
            alt_svc: AltSvc {
                enabled: true,
                max_age: Duration::from_secs(86400),
            },
            tls: Tls {
                handshake_timeout: Duration::from_secs(10),
                certificates: Vec::new(),
            },
            client: Client::default(),
            routes: vec![Route {
                host: None,
                path_prefix: "/".to_owned(),
                pool: DEFAULT_POOL.to_owned(),
            }],
            pools: vec![Pool::new(DEFAULT_POOL, endpoints)],
        }
    }

    /// Reads and validates a file.
    pub fn load(path: &Path) -> Result<Self, ConfigErrors> {
        let source = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
            source: source.clone(),
            errors: vec![ConfigError {
                line: 0,
                key: "(file)".to_owned(),
                reason: format!("cannot read: {e}"),
            }],
        })?;
        Self::parse(&text, &source, path.parent())
    }

    /// Validates config text; relative file paths resolve against `base`.
    pub fn parse(text: &str, source: &str, base: Option<&Path>) -> Result<Self, ConfigErrors> {
        let fail = |errors| ConfigErrors {
            source: source.to_owned(),
            errors,
        };
        let doc = toml_edit::ImDocument::parse(text).map_err(|e| {
            let mut cx = Cx::new(text);
            let line = cx.line_of(e.span());
            cx.error(line, "(syntax)", e.message().trim().to_owned());
            fail(cx.errors)
        })?;
        let mut cx = Cx::new(text);
        let config = read(&mut cx, doc.as_table(), base.unwrap_or(Path::new(".")));
        if cx.errors.is_empty() {
            Ok(config)
        } else {
            cx.errors.sort_by_key(|e| e.line);
            Err(fail(cx.errors))
        }
    }
}

fn parse_const<T: std::str::FromStr>(s: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    // Only called on the compile-time constants above, which parse.
    #[allow(clippy::expect_used)]
    s.parse().expect("built-in default parses")
}

fn read(cx: &mut Cx<'_>, doc: &toml_edit::Table, base: &Path) -> Config {
    let mut root = Table::root(doc);
    let defaults = Config::with_upstreams(Vec::new());
    let listen = root.or(cx, "listen", defaults.listen);
    let http_listen = root.opt(cx, "http_listen");
    let admin = root.opt(cx, "admin").or(defaults.admin);
    let trusted_proxies = root.or(cx, "trusted_proxies", Vec::new());
    let workers = root.opt::<usize>(cx, "workers").and_then(NonZeroUsize::new);
    let alt_svc = read_alt_svc(cx, &mut root, defaults.alt_svc);
    let tls = read_tls(cx, &mut root, base, defaults.tls);
    let client = read_client(cx, &mut root);
    let pools = read_pools(cx, &mut root, base);
    let routes = read_routes(cx, &mut root, &pools);
    root.finish(cx);
    Config {
        listen,
        http_listen,
        admin,
        trusted_proxies,
        workers,
        alt_svc,
        tls,
        client,
        routes,
        pools,
    }
}

fn read_alt_svc(cx: &mut Cx<'_>, root: &mut Table<'_>, d: AltSvc) -> AltSvc {
    let Some(mut t) = root.table(cx, "alt_svc") else {
        return d;
    };
    let out = AltSvc {
        enabled: t.or(cx, "enabled", d.enabled),
        max_age: t.or(cx, "max_age", d.max_age),
    };
    t.finish(cx);
    out
}

fn read_tls(cx: &mut Cx<'_>, root: &mut Table<'_>, base: &Path, d: Tls) -> Tls {
    let Some(mut t) = root.table(cx, "tls") else {
        return d;
    };
    let handshake_timeout = t.or(cx, "handshake_timeout", d.handshake_timeout);
    let mut certificates = Vec::new();
    for mut c in t.tables(cx, "certificates") {
        let cert = existing_file(cx, &mut c, "cert", base);
        let key = existing_file(cx, &mut c, "key", base);
        if let (Some(cert), Some(key)) = (cert, key) {
            certificates.push(CertFiles { cert, key });
        }
        c.finish(cx);
    }
    t.finish(cx);
    Tls {
        handshake_timeout,
        certificates,
    }
}

/// A required path that must name a readable file.
fn existing_file(
    cx: &mut Cx<'_>,
    t: &mut Table<'_>,
    key: &'static str,
    base: &Path,
) -> Option<PathBuf> {
    let Some(path) = t.opt::<PathBuf>(cx, key) else {
        if t.line_of(cx, key) == t.line() {
            let line = t.line();
            cx.error(line, &t.path(key), "missing (required)");
        }
        return None;
    };
    let path = base.join(path);
    match std::fs::metadata(&path) {
        Ok(m) if m.is_file() => Some(path),
        Ok(_) => {
            let line = t.line_of(cx, key);
            cx.error(
                line,
                &t.path(key),
                format!("{} is not a file", path.display()),
            );
            None
        }
        Err(e) => {
            let line = t.line_of(cx, key);
            cx.error(
                line,
                &t.path(key),
                format!("cannot read {}: {e}", path.display()),
            );
            None
        }
    }
}

fn read_client(cx: &mut Cx<'_>, root: &mut Table<'_>) -> Client {
    let d = Client::default();
    let Some(mut t) = root.table(cx, "client") else {
        return d;
    };
    let out = Client {
        header_read_timeout: positive(cx, &mut t, "header_read_timeout", d.header_read_timeout),
        idle_timeout: positive(cx, &mut t, "idle_timeout", d.idle_timeout),
        max_header_bytes: at_least(cx, &mut t, "max_header_bytes", d.max_header_bytes, 1024),
        max_headers: at_least(cx, &mut t, "max_headers", d.max_headers, 8),
        max_concurrent_streams: at_least(
            cx,
            &mut t,
            "max_concurrent_streams",
            d.max_concurrent_streams,
            1,
        ),
        max_connections: t.opt(cx, "max_connections"),
    };
    t.finish(cx);
    out
}

fn positive(cx: &mut Cx<'_>, t: &mut Table<'_>, key: &'static str, d: Duration) -> Duration {
    match t.opt::<Duration>(cx, key) {
        Some(v) if v.is_zero() => {
            let line = t.line_of(cx, key);
            cx.error(line, &t.path(key), "must be greater than zero");
            d
        }
        Some(v) => v,
        None => d,
    }
}

fn at_least<T>(cx: &mut Cx<'_>, t: &mut Table<'_>, key: &'static str, d: T, min: T) -> T
where
    T: FromToml + PartialOrd + std::fmt::Display + Copy,
{
    match t.opt::<T>(cx, key) {
        Some(v) if v < min => {
            let line = t.line_of(cx, key);
            cx.error(line, &t.path(key), format!("must be at least {min}"));
            d
        }
        Some(v) => v,
        None => d,
    }
}

fn read_pools(cx: &mut Cx<'_>, root: &mut Table<'_>, base: &Path) -> Vec<Pool> {
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

fn read_routes(cx: &mut Cx<'_>, root: &mut Table<'_>, pools: &[Pool]) -> Vec<Route> {
    let line = root.line_of(cx, "routes");
    let tables = root.tables(cx, "routes");
    if tables.is_empty() {
        return match pools {
            [only] => vec![Route {
                host: None,
                path_prefix: "/".to_owned(),
                pool: only.name().to_owned(),
            }],
            [] => {
                cx.error(line, "pools", "at least one pool is needed");
                Vec::new()
            }
            _ => {
                cx.error(
                    line,
                    "routes",
                    "several pools need [[routes]] to say which requests go where",
                );
                Vec::new()
            }
        };
    }
    let mut routes = Vec::new();
    for mut t in tables {
        let host = t.opt::<String>(cx, "host").map(|h| normalize_host(&h));
        let path_prefix: String = t.or(cx, "path_prefix", "/".to_owned());
        if !path_prefix.starts_with('/') {
            let line = t.line_of(cx, "path_prefix");
            cx.error(line, &t.path("path_prefix"), "must start with /");
        }
        match t.opt::<String>(cx, "pool") {
            Some(pool) if pools.iter().any(|p| p.name() == pool) => routes.push(Route {
                host,
                path_prefix,
                pool,
            }),
            Some(pool) => {
                let line = t.line_of(cx, "pool");
                cx.error(
                    line,
                    &t.path("pool"),
                    format!("no pool named {pool:?} ([pools.{pool}])"),
                );
            }
            None => {
                let line = t.line();
                cx.error(line, &t.path("pool"), "missing (required)");
            }
        }
        t.finish(cx);
    }
    routes
}

/// Lower-case host with any port removed: what routes and the Host check compare.
pub fn normalize_host(host: &str) -> String {
    let host = host.trim();
    let no_port = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        match host.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') && p.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => host,
        }
    };
    no_port.to_ascii_lowercase()
}

#[cfg(test)]
mod tests;
