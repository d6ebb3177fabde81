//! Configuration: one TOML file (or CLI flags) turned into typed settings.
//!
//! Everything is validated before anything starts: unknown keys, bad values,
//! missing files and dangling pool names are all reported together, each with its
//! key path and line. Only this module knows TOML; the library crates take their
//! own plain config structs.
//!
//! Long (past 900 lines) because the top-level keys and their cross-checks
//! (listener collisions, the admin token) live here; sections with their own
//! rules already have their own modules (`pools`, `cache`, `acme`, ...), and the
//! top-level listener keys are the next to move out.

mod acme;
mod cache;
mod compress;
pub mod effective;
mod forecast;
mod hedge;
mod hints;
mod pools;
mod proxy_protocol;
mod quic;
mod rate_limits;
mod redis;
mod regions;
mod split;
mod sticky;
mod tls;
pub use acme::{Acme, AcmeChallenge};
mod upgrade;
use cache::read_cache;
pub use cache::{Cache, CacheStatuses};
pub use compress::{
    Compress, Encoding, DEFAULT_MIN_BYTES as COMPRESS_MIN_BYTES, DEFAULT_TYPES as COMPRESS_TYPES,
};
pub use forecast::{Forecast, MIN_HISTORY as FORECAST_MIN_HISTORY};
pub use hints::EarlyHints;
use pools::read_pools;
pub use proxy_protocol::ProxyProtocol;
use quic::read_quic;
pub use quic::{Quic, Retry};
pub use rate_limits::{LimitFallback, LimitKey, LimitScope, Rate, RateLimit};
pub use redis::{Redis, RedisTarget};
pub use regions::{Geo, GeoRegion, Prefer};
pub use split::{Guard, Match, Split, SplitVersion, Target, BUCKETS, DEFAULT_HEADER};
pub use sticky::{is_cookie_name, Sticky, StickyKey, MIN_SECRET};
use tls::read_tls;
pub use tls::{
    CertFiles, ClientAuth, ClientAuthMode, TicketKey, TicketKeys, Tls, CLIENT_CERT_HEADER,
    TICKET_ROTATION,
};
pub use upgrade::Upgrade;
mod walk;

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use upstream::discovery::DnsConfig;
use upstream::{EndpointAddr, PoolConfig};

use walk::{Addrs, Cx, FromToml, Table};
pub use walk::{ConfigError, ConfigErrors};

/// The whole validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// TLS over TCP (HTTP/1.1, HTTP/2) and QUIC over UDP (HTTP/3), each on
    /// every address (at least one; e.g. an IPv4 and an IPv6 one).
    pub listen: Vec<SocketAddr>,
    /// Plaintext HTTP/1.1 and h2c (prior knowledge) on each; empty is off.
    pub http_listen: Vec<SocketAddr>,
    /// What the plaintext listener does with a request.
    pub http_mode: HttpMode,
    /// `/healthz` and `/metrics`.
    pub admin: Option<SocketAddr>,
    /// The bearer token the admin API's privileged paths (`/status`, `/reload`,
    /// `/cache/purge`, the status page) require; without it they answer
    /// loopback peers only.
    pub admin_token: Option<Secret>,
    /// Peers whose `X-Forwarded-For` is extended rather than replaced.
    pub trusted_proxies: Vec<IpNet>,
    /// `[proxy_protocol]`: PROXY headers from trusted load balancers on TCP.
    pub proxy_protocol: ProxyProtocol,
    /// Tokio worker threads; `None` is one per core.
    pub workers: Option<NonZeroUsize>,
    /// Where edge keeps what it generates and must find again after a restart
    /// (the local CA when no certificate is configured).
    pub state_dir: PathBuf,
    pub alt_svc: AltSvc,
    pub tls: Tls,
    pub client: Client,
    pub routes: Vec<Route>,
    pub pools: Vec<Pool>,
    /// Regions, client placement and spillover; `None` without a `[geo]` table.
    pub geo: Option<Geo>,
    pub cache: Cache,
    /// The Redis shared by every edge (`[redis]`, or the older `cache.redis`);
    /// `None` runs on local state only.
    pub redis: Option<Redis>,
    pub quic: Quic,
    /// `[log]`: the access log.
    pub log: Log,
    /// `[drain]`: withdrawal and shutdown on SIGTERM.
    pub drain: Drain,
    pub limits: Limits,
    /// `[[rate_limits]]`, in config order (every matching rule applies).
    pub rate_limits: Vec<RateLimit>,
    /// `[acme]`: certificates ordered from an ACME CA; `None` without the table.
    pub acme: Option<Acme>,
    /// `[upgrade]`: HTTP/1.1 upgrades (WebSocket) and their tunnels.
    pub upgrade: Upgrade,
    /// `[forecast]`: per-pool rate forecasts and pre-warming; `None` (off) without the table.
    pub forecast: Option<Forecast>,
}

/// `[drain]`: how the edge leaves on SIGTERM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Drain {
    /// `/healthz` answers 503 this long while traffic is still served, so
    /// GeoDNS and load balancers withdraw the edge before it stops accepting.
    pub delay: Duration,
    /// Then open connections get this long to finish.
    pub grace: Duration,
}

impl Default for Drain {
    fn default() -> Self {
        Self {
            delay: Duration::from_secs(10),
            grace: Duration::from_secs(30),
        }
    }
}

/// `[log]`: the access log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Log {
    /// `None`: JSON when stdout is not a terminal, text when it is.
    pub access: Option<AccessFormat>,
    /// Where access lines go; stdout when `None`. Reopened on SIGUSR1.
    pub access_file: Option<PathBuf>,
}

/// How access log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessFormat {
    Json,
    Text,
    Off,
}

impl FromToml for AccessFormat {
    fn from_toml(v: &toml_edit::Value) -> Result<Self, String> {
        match v.as_str() {
            Some("json") => Ok(Self::Json),
            Some("text") => Ok(Self::Text),
            Some("off") => Ok(Self::Off),
            Some(other) => Err(format!(
                "expected \"json\", \"text\" or \"off\", found {other:?}"
            )),
            None => Err(format!("expected a string, found {}", v.type_name())),
        }
    }
}

/// Process-wide limits that protect the edge itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// Resident memory (bytes) past which the edge stops accepting connections
    /// and sheds idle ones, oldest first; `None` is off.
    pub memory_high: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AltSvc {
    pub enabled: bool,
    pub max_age: Duration,
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
    /// Either way the open-file limit keeps a reserve for upstream connections.
    pub max_connections: Option<usize>,
    /// Request body bytes at most (a route may set its own).
    pub max_body_bytes: u64,
    /// No request body bytes for this long: 408 (or a reset once the response started).
    pub body_idle_timeout: Duration,
    /// Request body bytes a second a client must average once the grace has
    /// passed (Apache's mod_reqtimeout MinRate); 0 turns it off.
    pub min_body_rate: u64,
    pub body_rate_grace: Duration,
    /// Normalise request paths before routing (dot segments, repeated slashes).
    pub normalize_path: bool,
    /// What normalising does with `%2F`, `%5C` and `%00` in a path.
    pub path_encoded_separators: EncodedSeparators,
    /// Open TCP client connections from one source (an IPv4 address or an IPv6 /64).
    pub max_connections_per_ip: usize,
    /// A response (h2: a stream; h1: the connection) that made no write progress
    /// this long is cancelled, freeing its upstream.
    pub write_idle_timeout: Duration,
    /// After edge sends an h2 GOAWAY (idle, drain, abuse) the connection is
    /// closed at most this much later, whatever the peer does.
    pub goaway_grace: Duration,
}

/// `http_mode`: the plaintext listener proxies like the TLS one, or answers 308
/// to https (ACME HTTP-01 challenge paths excepted).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpMode {
    Proxy,
    Redirect,
}

impl walk::FromToml for HttpMode {
    fn from_toml(v: &toml_edit::Value) -> Result<Self, String> {
        match <String as walk::FromToml>::from_toml(v)?.as_str() {
            "proxy" => Ok(Self::Proxy),
            "redirect" => Ok(Self::Redirect),
            other => Err(format!("{other:?} is not \"proxy\" or \"redirect\"")),
        }
    }
}

/// `client.path_encoded_separators`: an encoded `/`, `\` or NUL in a path is
/// refused with 400, or kept as an escape (never decoded into a separator).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncodedSeparators {
    Reject,
    Keep,
}

impl walk::FromToml for EncodedSeparators {
    fn from_toml(v: &toml_edit::Value) -> Result<Self, String> {
        match <String as walk::FromToml>::from_toml(v)?.as_str() {
            "reject" => Ok(Self::Reject),
            "keep" => Ok(Self::Keep),
            other => Err(format!("{other:?} is not \"reject\" or \"keep\"")),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Route {
    /// The route's name in metrics and the admin API (default: host and path prefix).
    pub name: String,
    /// Lower-case host without port; `None` matches every host.
    pub host: Option<String>,
    pub path_prefix: String,
    pub pool: String,
    /// Responses on this route go through the cache (when `[cache]` is enabled).
    pub cache: bool,
    /// Responses with Set-Cookie may be stored (without the cookie).
    pub cache_set_cookie: bool,
    /// This route's request body limit, instead of `client.max_body_bytes`.
    pub max_body_bytes: Option<u64>,
    /// The statuses this route's cache may store.
    pub cache_statuses: CacheStatuses,
    /// Only clients that presented a verified certificate (`[tls.client_auth]`)
    /// may use this route; others get 403.
    pub require_client_cert: bool,
    /// Gray release: versions sharing the route (`pool` is then the baseline's).
    pub split: Option<Split>,
    /// Responses compressed for clients that accept it (`compress`); off when `None`.
    pub compress: Option<Compress>,
    /// Which clients get the backend's 103 Early Hints (`early_hints`).
    pub early_hints: EarlyHints,
}

/// A pool: the upstream crate's own settings, plus what only a file names.
#[derive(Clone, Debug)]
pub struct Pool {
    pub settings: PoolConfig,
    /// PEM CA bundle read into `settings.extra_roots` at start.
    pub ca: Option<PathBuf>,
    /// Endpoints from DNS instead of `settings.endpoints`.
    pub dns: Option<DnsConfig>,
    /// A regional pool's DNS-discovered regions, each with its own lookup.
    pub regional_dns: Vec<(upstream::RegionId, DnsConfig)>,
    /// Sticky sessions, when the pool keeps users on one endpoint.
    pub sticky: Option<Sticky>,
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
            max_body_bytes: 1 << 30,
            body_idle_timeout: Duration::from_secs(10),
            min_body_rate: 500,
            body_rate_grace: Duration::from_secs(20),
            normalize_path: true,
            path_encoded_separators: EncodedSeparators::Reject,
            max_connections_per_ip: 256,
            write_idle_timeout: Duration::from_secs(30),
            goaway_grace: Duration::from_secs(10),
        }
    }
}

impl Route {
    /// Every host and path to `pool`, cached when the cache is on.
    pub fn catch_all(pool: &str) -> Self {
        Self {
            name: "*/".to_owned(),
            host: None,
            path_prefix: "/".to_owned(),
            pool: pool.to_owned(),
            cache: true,
            cache_set_cookie: false,
            max_body_bytes: None,
            cache_statuses: CacheStatuses::default(),
            require_client_cert: false,
            split: None,
            compress: None,
            early_hints: EarlyHints::All,
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
            regional_dns: Vec::new(),
            sticky: None,
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
            listen: vec![parse_const(DEFAULT_LISTEN)],
            http_listen: Vec::new(),
            http_mode: HttpMode::Proxy,
            admin: Some(parse_const(DEFAULT_ADMIN)),
            trusted_proxies: Vec::new(),
            proxy_protocol: ProxyProtocol::default(),
            workers: None,
            admin_token: None,
            state_dir: default_state_dir(),
            alt_svc: AltSvc {
                enabled: true,
                max_age: Duration::from_secs(86400),
            },
            tls: Tls::default(),
            client: Client::default(),
            routes: vec![Route::catch_all(DEFAULT_POOL)],
            pools: vec![Pool::new(DEFAULT_POOL, endpoints)],
            geo: None,
            cache: Cache::default(),
            redis: None,
            limits: Limits::default(),
            rate_limits: Vec::new(),
            quic: Quic::default(),
            log: Log::default(),
            drain: Drain::default(),
            acme: None,
            upgrade: Upgrade::default(),
            forecast: None,
        }
    }

    /// Reads and validates a file.
    pub fn load(path: &Path) -> Result<Self, ConfigErrors> {
        Self::load_opts(path, false)
    }

    /// As `load`, for `edge run -c FILE --upstream URL`: the flags supply the
    /// pools, so the file may have none.
    pub fn load_for_upstream_flags(path: &Path) -> Result<Self, ConfigErrors> {
        Self::load_opts(path, true)
    }

    fn load_opts(path: &Path, pools_from_flags: bool) -> Result<Self, ConfigErrors> {
        let source = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
            source: source.clone(),
            errors: vec![ConfigError {
                line: 0,
                key: "(file)".to_owned(),
                reason: format!("cannot read: {e}"),
            }],
        })?;
        Self::parse_opts(&text, &source, path.parent(), pools_from_flags)
    }

    /// Validates config text; relative file paths resolve against `base`.
    pub fn parse(text: &str, source: &str, base: Option<&Path>) -> Result<Self, ConfigErrors> {
        Self::parse_opts(text, source, base, false)
    }

    fn parse_opts(
        text: &str,
        source: &str,
        base: Option<&Path>,
        pools_from_flags: bool,
    ) -> Result<Self, ConfigErrors> {
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
        cx.pools_from_flags = pools_from_flags;
        let config = read(&mut cx, doc.as_table(), base.unwrap_or(Path::new(".")));
        if cx.errors.is_empty() {
            Ok(config)
        } else {
            cx.errors.sort_by_key(|e| e.line);
            Err(fail(cx.errors))
        }
    }
}

/// systemd's `StateDirectory=` (`$STATE_DIRECTORY`), else the user's data
/// directory (`$XDG_DATA_HOME/edge`, `~/.local/share/edge`), else `/var/lib/edge`.
pub fn default_state_dir() -> PathBuf {
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(dirs) = var("STATE_DIRECTORY") {
        // systemd lists several directories separated by ':'; the first is ours.
        if let Some(first) = std::env::split_paths(&dirs).next() {
            return first;
        }
    }
    if let Some(data) = var("XDG_DATA_HOME") {
        return PathBuf::from(data).join("edge");
    }
    match var("HOME") {
        Some(home) => PathBuf::from(home).join(".local/share/edge"),
        None => PathBuf::from("/var/lib/edge"),
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

/// A value that must not be printed (a token): its `Debug` says so instead.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// `admin_token_file`: a file holding the admin API's bearer token (its first
/// line; at least 16 characters, so a typo'd empty file is not a token).
fn read_admin_token(cx: &mut Cx<'_>, root: &mut Table<'_>, base: &Path) -> Option<Secret> {
    let path = base.join(root.opt::<PathBuf>(cx, "admin_token_file")?);
    let line = root.line_of(cx, "admin_token_file");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let token = text.lines().next().unwrap_or("").trim().to_owned();
            if token.len() < 16 {
                let reason = format!(
                    "{}: the token must be at least 16 characters",
                    path.display()
                );
                cx.error(line, "admin_token_file", reason);
                return None;
            }
            Some(Secret(token))
        }
        Err(e) => {
            cx.error(line, "admin_token_file", format!("{}: {e}", path.display()));
            None
        }
    }
}

/// Two listeners on one address cannot both bind: refused here, naming both
/// keys (or the key twice, for two entries of one list), rather than at start
/// with a bare "address in use". (`listen` holds TCP and UDP; the others TCP
/// only. Port 0 lets the kernel pick, so never collides.)
fn check_listener_collisions(
    cx: &mut Cx<'_>,
    root: &Table<'_>,
    listen: &[SocketAddr],
    http_listen: &[SocketAddr],
    admin: Option<SocketAddr>,
) {
    let keys: Vec<(&'static str, SocketAddr)> = listen
        .iter()
        .map(|a| ("listen", *a))
        .chain(http_listen.iter().map(|a| ("http_listen", *a)))
        .chain(admin.map(|a| ("admin", a)))
        .collect();
    for (i, (a, x)) in keys.iter().enumerate() {
        for (b, y) in &keys[i + 1..] {
            if !one_address(x, y) {
                continue;
            }
            let named = |key: &str, addr: &SocketAddr| {
                if root.has(key) {
                    format!("`{key}` ({addr})")
                } else {
                    format!("`{key}`'s default ({addr})")
                }
            };
            // Reported at the key the file wrote (the later one if both).
            let at = if root.has(b) { *b } else { *a };
            let reason = format!(
                "{} and {} are one address: two listeners cannot share it",
                named(a, x),
                named(b, y)
            );
            cx.error(root.line_of(cx, at), at, reason);
        }
    }
}

/// Whether binding both would collide: one port (not 0) in one family, on one
/// address or a wildcard.
fn one_address(x: &SocketAddr, y: &SocketAddr) -> bool {
    let wildcard = x.ip().is_unspecified() || y.ip().is_unspecified();
    x.port() != 0
        && x.port() == y.port()
        && x.is_ipv4() == y.is_ipv4()
        && (x.ip() == y.ip() || wildcard)
}

fn read(cx: &mut Cx<'_>, doc: &toml_edit::Table, base: &Path) -> Config {
    let mut root = Table::root(doc);
    let defaults = Config::with_upstreams(Vec::new());
    let listen = match root.opt::<Addrs>(cx, "listen") {
        Some(Addrs(list)) if list.is_empty() => {
            let line = root.line_of(cx, "listen");
            cx.error(line, "listen", "needs at least one address");
            defaults.listen
        }
        Some(Addrs(list)) => list,
        None => defaults.listen,
    };
    let http_listen = root
        .opt::<Addrs>(cx, "http_listen")
        .map_or(Vec::new(), |a| a.0);
    let http_mode = root.opt::<HttpMode>(cx, "http_mode");
    let admin = root.opt(cx, "admin").or(defaults.admin);
    let trusted_proxies = root.or(cx, "trusted_proxies", Vec::new());
    let proxy_protocol = proxy_protocol::read_proxy_protocol(cx, &mut root);
    let workers = root.opt::<usize>(cx, "workers").and_then(|n| {
        let workers = NonZeroUsize::new(n);
        if workers.is_none() {
            let line = root.line_of(cx, "workers");
            let reason = "must be at least 1 (leave it out for one worker per core)";
            cx.error(line, "workers", reason.to_string());
        }
        workers
    });
    check_listener_collisions(cx, &root, &listen, &http_listen, admin);
    let admin_token = read_admin_token(cx, &mut root, base);
    let state_dir = root
        .opt::<PathBuf>(cx, "state_dir")
        .map_or(defaults.state_dir, |p| base.join(p));
    if state_dir.exists() && !state_dir.is_dir() {
        let line = root.line_of(cx, "state_dir");
        let reason = format!("{} exists and is not a directory", state_dir.display());
        cx.error(line, "state_dir", reason);
    }
    let alt_svc = read_alt_svc(cx, &mut root, defaults.alt_svc);
    let tls = read_tls(cx, &mut root, base, defaults.tls);
    let acme = acme::read_acme(cx, &mut root, base, &state_dir, !http_listen.is_empty());
    // With ACME on, plaintext requests go to https (challenge paths excepted).
    let http_mode = http_mode.unwrap_or(if acme.is_some() {
        HttpMode::Redirect
    } else {
        defaults.http_mode
    });
    let client = read_client(cx, &mut root);
    let geo = regions::read_geo(cx, &mut root, base);
    let pools = read_pools(cx, &mut root, base, geo.as_ref());
    let routes = read_routes(cx, &mut root, &pools, geo.as_ref(), &tls);
    let cache = read_cache(cx, &mut root);
    let redis = redis::read_redis(cx, &mut root, base);
    let redis = merge_legacy_redis(cx, &root, &cache, redis);
    let limits = read_limits(cx, &mut root);
    let log = read_log(cx, &mut root, base);
    let drain = read_drain(cx, &mut root);
    let rate_limits = rate_limits::read_rate_limits(cx, &mut root, &pools, redis.is_some());
    sticky::check_shared(cx, &pools, redis.is_some());
    if tls.early_data && tls.ticket_keys != TicketKeys::Local {
        let reason = "not with tls.early_data: rustls accepts 0-RTT only on single-use \
                      sessions kept in the process, never on tickets (which a replayed \
                      ClientHello could use again); drop one of the two";
        cx.error(tls.ticket_keys_line, "tls.ticket_keys", reason);
    }
    if tls.ticket_keys == TicketKeys::Redis && redis.is_none() {
        let reason = "\"redis\" needs [redis] (where the replicas keep their shared keys)";
        cx.error(tls.ticket_keys_line, "tls.ticket_keys", reason);
    }
    let quic = read_quic(cx, &mut root);
    let upgrade = upgrade::read_upgrade(cx, &mut root);
    let forecast = forecast::read_forecast(cx, &mut root);
    root.finish(cx);
    Config {
        listen,
        http_listen,
        http_mode,
        admin,
        trusted_proxies,
        proxy_protocol,
        workers,
        admin_token,
        state_dir,
        alt_svc,
        tls,
        client,
        routes,
        pools,
        geo,
        cache,
        redis,
        limits,
        rate_limits,
        quic,
        log,
        drain,
        acme,
        upgrade,
        forecast,
    }
}

fn read_drain(cx: &mut Cx<'_>, root: &mut Table<'_>) -> Drain {
    let d = Drain::default();
    let Some(mut t) = root.table(cx, "drain") else {
        return d;
    };
    // Zero is allowed for the delay: leave at once (a single edge, tests).
    let delay = t.or(cx, "delay", d.delay);
    let grace = positive(cx, &mut t, "grace", d.grace);
    t.finish(cx);
    Drain { delay, grace }
}

fn read_log(cx: &mut Cx<'_>, root: &mut Table<'_>, base: &Path) -> Log {
    let Some(mut t) = root.table(cx, "log") else {
        return Log::default();
    };
    let access = t.opt::<AccessFormat>(cx, "access");
    let access_file = t.opt::<PathBuf>(cx, "access_file").map(|p| base.join(p));
    if let Some(dir) = access_file.as_ref().and_then(|p| p.parent()) {
        if !dir.as_os_str().is_empty() && !dir.is_dir() {
            let line = t.line_of(cx, "access_file");
            let reason = format!("{} is not a directory", dir.display());
            cx.error(line, &t.path("access_file"), reason);
        }
    }
    t.finish(cx);
    Log {
        access,
        access_file,
    }
}

/// `cache.redis` (and its `redis_*` keys) predate `[redis]` and mean the same as
/// `[redis] url`; giving both is refused, so there is one Redis to reason about.
fn merge_legacy_redis(
    cx: &mut Cx<'_>,
    root: &Table<'_>,
    cache: &Cache,
    redis: Option<Redis>,
) -> Option<Redis> {
    let Some(url) = &cache.redis else {
        return redis;
    };
    if redis.is_some() {
        let line = root.line_of(cx, "redis");
        cx.error(
            line,
            "cache.redis",
            "Redis is set twice: keep [redis] and remove cache.redis (and cache.redis_*)",
        );
        return redis;
    }
    Some(Redis {
        timeout: cache.redis_timeout,
        breaker_failures: cache.redis_breaker_failures,
        breaker_cooldown: cache.redis_breaker_cooldown,
        ..Redis::single(url.clone())
    })
}

fn read_limits(cx: &mut Cx<'_>, root: &mut Table<'_>) -> Limits {
    // Below this the guard would trip on the edge's own idle footprint.
    const MIN_MEMORY_HIGH: u64 = 16 << 20;
    let Some(mut t) = root.table(cx, "limits") else {
        return Limits::default();
    };
    let memory_high = t.opt::<u64>(cx, "memory_high");
    if memory_high.is_some_and(|v| v < MIN_MEMORY_HIGH) {
        let line = t.line_of(cx, "memory_high");
        let path = t.path("memory_high");
        cx.error(
            line,
            &path,
            format!("must be at least {MIN_MEMORY_HIGH} (bytes)"),
        );
    }
    t.finish(cx);
    Limits { memory_high }
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
        max_body_bytes: t.or(cx, "max_body_bytes", d.max_body_bytes),
        body_idle_timeout: positive(cx, &mut t, "body_idle_timeout", d.body_idle_timeout),
        min_body_rate: t.or(cx, "min_body_rate", d.min_body_rate),
        body_rate_grace: t.or(cx, "body_rate_grace", d.body_rate_grace),
        normalize_path: t.or(cx, "normalize_path", d.normalize_path),
        path_encoded_separators: t.or(cx, "path_encoded_separators", d.path_encoded_separators),
        max_connections_per_ip: at_least(
            cx,
            &mut t,
            "max_connections_per_ip",
            d.max_connections_per_ip,
            1,
        ),
        write_idle_timeout: positive(cx, &mut t, "write_idle_timeout", d.write_idle_timeout),
        goaway_grace: positive(cx, &mut t, "goaway_grace", d.goaway_grace),
    };
    t.finish(cx);
    out
}

pub(super) fn positive(
    cx: &mut Cx<'_>,
    t: &mut Table<'_>,
    key: &'static str,
    d: Duration,
) -> Duration {
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

pub(super) fn at_least<T>(cx: &mut Cx<'_>, t: &mut Table<'_>, key: &'static str, d: T, min: T) -> T
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

fn read_routes(
    cx: &mut Cx<'_>,
    root: &mut Table<'_>,
    pools: &[Pool],
    geo: Option<&Geo>,
    tls: &Tls,
) -> Vec<Route> {
    let line = root.line_of(cx, "routes");
    let tables = root.tables(cx, "routes");
    if tables.is_empty() {
        return match pools {
            [only] => vec![Route::catch_all(only.name())],
            [] => {
                if !cx.pools_from_flags {
                    cx.error(line, "pools", "at least one pool is needed");
                }
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
    let mut routes: Vec<Route> = Vec::new();
    for mut t in tables {
        let host = t.opt::<String>(cx, "host").map(|h| normalize_host(&h));
        let path_prefix: String = t.or(cx, "path_prefix", "/".to_owned());
        if !path_prefix.starts_with('/') {
            let line = t.line_of(cx, "path_prefix");
            cx.error(line, &t.path("path_prefix"), "must start with /");
        }
        let default_name = format!("{}{path_prefix}", host.as_deref().unwrap_or("*"));
        let name = t.or(cx, "name", default_name);
        if routes.iter().any(|r| r.name == name) {
            let line = t.line_of(cx, "name");
            cx.error(
                line,
                &t.path("name"),
                format!("another route is named {name:?}"),
            );
        }
        let cache = t.or(cx, "cache", true);
        let cache_set_cookie = t.or(cx, "cache_set_cookie", false);
        let max_body_bytes = t.opt(cx, "max_body_bytes");
        let cache_statuses = t.or(cx, "cache_statuses", CacheStatuses::default());
        let require_client_cert = t.or(cx, "require_client_cert", false);
        if require_client_cert && tls.client_auth.is_none() {
            let line = t.line_of(cx, "require_client_cert");
            cx.error(
                line,
                &t.path("require_client_cert"),
                "needs [tls.client_auth] (the CA client certificates are verified against)",
            );
        }
        let compress = compress::read_compress(cx, &mut t);
        let early_hints = t.or(cx, "early_hints", EarlyHints::default());
        let split = split::read_split(cx, &mut t, pools, geo);
        let pool = match (t.opt::<String>(cx, "pool"), &split) {
            (None, Some(s)) => s.versions.first().map(|v| v.pool.clone()),
            (Some(_), Some(_)) => {
                let line = t.line_of(cx, "pool");
                cx.error(
                    line,
                    &t.path("pool"),
                    "a route has a pool or a split, not both",
                );
                None
            }
            (Some(pool), None) if pools.iter().any(|p| p.name() == pool) => Some(pool),
            (Some(pool), None) => {
                let line = t.line_of(cx, "pool");
                cx.error(
                    line,
                    &t.path("pool"),
                    format!("no pool named {pool:?} ([pools.{pool}])"),
                );
                None
            }
            (None, None) => {
                let line = t.line();
                cx.error(line, &t.path("pool"), "missing (required)");
                None
            }
        };
        if let Some(pool) = pool {
            routes.push(Route {
                name,
                host,
                path_prefix,
                pool,
                cache,
                cache_set_cookie,
                max_body_bytes,
                cache_statuses,
                require_client_cert,
                split,
                compress,
                early_hints,
            });
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
