//! The request pipeline: one path for HTTP/1.1, HTTP/2 and HTTP/3.
//!
//! `handle` is the whole order a request goes through, one named phase after
//! another, each a plain async fn in its own module: `admit` → `route` → `limit`
//! → `cache` → `select` → `forward` → `respond`; a request that offers a
//! configured protocol upgrade (WebSocket) takes `upgrade` in place of
//! `forward` (and skips the cache). A split route's version (gray release) is
//! chosen in `route` and its answer fed to the rollback guard in `respond`
//! (`gray`). Listeners call it with an
//! `http::Request<Body>` and write back what it returns; it never fails: every
//! error becomes a response in `respond` and nowhere else. The pipeline knows no
//! listener and no client protocol beyond `req.version()` and `Peer`.

mod admit;
mod authority;
mod cache;
mod compress;
mod forward;
mod gray;
mod headers;
mod hints;
mod limit;
mod path;
mod respond;
mod route;
mod select;
mod sticky;
mod trace;
mod upgrade;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, Request, Response, Version};
use ipnet::IpNet;
use upstream::Pool;

pub use crate::chain::error_chain;
pub use gray::{Store as GrayStore, View as SplitView};
pub use headers::{request_id, strip_hop_by_hop, to_upstream, Peer, REQUEST_ID};
pub use hints::early_hint;
pub use limit::{gcra, Rules as RateLimitRules, Store as RateLimitStore};
pub use route::Routes;
pub use trace::Trace;
pub use upgrade::Tunnel;

use crate::access_log::AccessLog;
use crate::body::{Body, BodyLimits};
use crate::cache::Cache;
use crate::config::Config;
use crate::forecast::Forecast;
use crate::locality::{Geo, Placed};
use crate::metrics::{Metrics, Proto};
use crate::shared::redis::Redis;
use crate::start::StartError;

/// Everything the pipeline needs, built from one config and swapped whole on reload.
pub struct Proxy {
    routes: Routes,
    pools: Vec<Arc<Pool<Body>>>,
    trusted: Vec<IpNet>,
    /// The client certificate header, with `[tls.client_auth]`.
    client_cert_header: Option<http::HeaderName>,
    /// Header fields a request may carry.
    max_headers: usize,
    /// Header section size a request may carry, counted as RFC 9113 does.
    max_header_bytes: usize,
    /// Path normalisation before routing.
    path: path::Policy,
    /// Regions and client placement, with `[geo]`.
    geo: Option<Arc<Geo>>,
    /// The cache store; it outlives reloads, so it is handed in, not built here.
    cache: Option<Arc<Cache>>,
    /// Request body limits (a route may lower or raise the size).
    body: BodyLimits,
    /// `[[rate_limits]]` of this config.
    rate_limits: limit::Rules,
    /// Their counters; like the cache, they outlive reloads and are handed in.
    limit_store: Option<Arc<limit::Store>>,
    /// Each pool's sticky sessions (same order as `pools`).
    sticky: Vec<Option<sticky::Sticky>>,
    /// The shared Redis, handed in (kept across reloads) for shared stickiness.
    redis: Option<Arc<Redis>>,
    /// The access log (kept across reloads), when it is on.
    access: Option<Arc<AccessLog>>,
    /// `[upgrade]`: the protocols passed to backends, and tunnel idle time.
    upgrade: crate::config::Upgrade,
    /// Split routes' guards by route name; outlives reloads (see `with_gray`).
    gray: Arc<gray::Store>,
    /// The config's routes, for `with_gray` to rebuild them on the kept guards.
    route_config: Vec<crate::config::Route>,
    pool_names: Vec<String>,
    /// `[forecast]` (kept across reloads), when it is on.
    forecast: Option<Arc<Forecast>>,
    /// Each pool's request counter for the forecast (same order as `pools`).
    rates: Vec<Option<Arc<AtomicU64>>>,
}

/// The backend label when no pool was chosen.
const NO_BACKEND: &str = "none";

impl Proxy {
    /// Builds every pool; a DNS pool resolves once first, and a failure of that
    /// first lookup is an error (there is no last-known-good set yet).
    pub async fn build(config: &Config) -> Result<Self, StartError> {
        let geo = match &config.geo {
            Some(g) => Some(Arc::new(
                Geo::new(g).map_err(|e| StartError::Setup(format!("geo: {e}")))?,
            )),
            None => None,
        };
        let mut pools = Vec::with_capacity(config.pools.len());
        let mut sticky = Vec::with_capacity(config.pools.len());
        for p in &config.pools {
            sticky.push(match &p.sticky {
                Some(s) => Some(
                    sticky::Sticky::new(p.name(), s, &config.state_dir).map_err(|e| {
                        StartError::Setup(format!("pools.{}.sticky: {e}", p.name()))
                    })?,
                ),
                None => None,
            });
            let pool = Arc::new(build_pool(p)?);
            let discover = |dns: &upstream::discovery::DnsConfig| {
                let dns = dns.clone();
                async move {
                    upstream::discovery::watch(dns)
                        .await
                        .map_err(|source| StartError::Discovery {
                            pool: p.name().to_owned(),
                            source,
                        })
                }
            };
            if let Some(dns) = &p.dns {
                pool.follow(discover(dns).await?);
            }
            for (region, dns) in &p.regional_dns {
                pool.follow_region(*region, discover(dns).await?);
            }
            if let Some(geo) = &geo {
                pool.observe_rtt(geo.clone());
            }
            pool.start_health_checks();
            pools.push(pool);
        }
        let gray = Arc::new(gray::Store::default());
        let routes = Routes::new(
            &config.routes,
            |name| config.pools.iter().position(|p| p.name() == name),
            &gray,
        );
        Ok(Self {
            routes,
            pools,
            trusted: config.trusted_proxies.clone(),
            client_cert_header: config.tls.client_auth.as_ref().map(|a| a.header.clone()),
            max_headers: config.client.max_headers,
            max_header_bytes: config.client.max_header_bytes,
            path: path::Policy {
                normalize: config.client.normalize_path,
                separators: config.client.path_encoded_separators,
            },
            geo,
            cache: None,
            rate_limits: limit::Rules::new(&config.rate_limits),
            limit_store: None,
            sticky,
            redis: None,
            access: None,
            upgrade: config.upgrade.clone(),
            gray,
            route_config: config.routes.clone(),
            pool_names: config.pools.iter().map(|p| p.name().to_owned()).collect(),
            forecast: None,
            rates: Vec::new(),
            body: BodyLimits {
                max_bytes: config.client.max_body_bytes,
                idle: config.client.body_idle_timeout,
                min_rate: config.client.min_body_rate,
                grace: config.client.body_rate_grace,
            },
        })
    }

    /// Counts `[[rate_limits]]` in `store` (kept across reloads).
    pub fn with_rate_limits(mut self, store: Option<Arc<limit::Store>>) -> Self {
        self.limit_store = store;
        self
    }

    /// The rate limit counters, for the next config's `Proxy`.
    pub fn rate_limit_store(&self) -> Option<Arc<limit::Store>> {
        self.limit_store.clone()
    }

    /// Writes a line per request to `log` (kept across reloads).
    pub fn with_access_log(mut self, log: Option<Arc<AccessLog>>) -> Self {
        self.access = log;
        self
    }

    /// The access log, for the next config's `Proxy`.
    pub fn access_log(&self) -> Option<Arc<AccessLog>> {
        self.access.clone()
    }

    /// Keeps shared sticky assignments in `redis` (kept across reloads).
    pub fn with_redis(mut self, redis: Option<Arc<Redis>>) -> Self {
        for s in self.sticky.iter_mut().flatten() {
            s.set_redis(redis.clone());
        }
        self.redis = redis;
        self
    }

    /// The shared Redis, for the next config's `Proxy`.
    pub fn redis(&self) -> Option<Arc<Redis>> {
        self.redis.clone()
    }

    /// Keeps split routes' guards in `store` (the previous config's): a route
    /// whose split is unchanged keeps its guard, rolled back or not.
    pub fn with_gray(mut self, store: Arc<gray::Store>) -> Self {
        let names = &self.pool_names;
        self.routes = Routes::new(
            &self.route_config,
            |name| names.iter().position(|p| p == name),
            &store,
        );
        let split: Vec<&str> = self
            .route_config
            .iter()
            .filter(|r| r.split.is_some())
            .map(|r| r.name.as_str())
            .collect();
        store.retain(&split);
        self.gray = store;
        self
    }

    /// The split routes' guards, for the next config's `Proxy`.
    pub fn gray_store(&self) -> Arc<gray::Store> {
        Arc::clone(&self.gray)
    }

    /// Counts every pool's requests for `forecast` (kept across reloads).
    pub fn with_forecast(mut self, forecast: Option<Arc<Forecast>>) -> Self {
        self.rates = match &forecast {
            Some(f) => self.pool_names.iter().map(|n| Some(f.counter(n))).collect(),
            None => Vec::new(),
        };
        self.forecast = forecast;
        self
    }

    /// The forecast, for the next config's `Proxy`.
    pub fn forecast(&self) -> Option<Arc<Forecast>> {
        self.forecast.clone()
    }

    /// The pools of this config, for the forecast's task.
    pub fn pools(&self) -> &[Arc<Pool<Body>>] {
        &self.pools
    }

    /// Serves cacheable routes through `cache` (when `Some`).
    pub fn with_cache(mut self, cache: Option<Arc<Cache>>) -> Self {
        self.cache = cache;
        self
    }
}

/// Builds one upstream pool from its config, reading its CA file if any.
pub fn build_pool(p: &crate::config::Pool) -> Result<Pool<Body>, StartError> {
    let mut settings = p.settings.clone();
    if let Some(path) = &p.ca {
        settings.extra_roots = crate::tls::load_roots(path)?;
    }
    Pool::new(settings).map_err(|source| StartError::Pool {
        pool: p.name().to_owned(),
        source,
    })
}

impl Proxy {
    /// Every pool's name and state, for metrics.
    pub fn pool_statuses(&self) -> impl Iterator<Item = (&str, upstream::PoolStatus)> {
        self.pools.iter().map(|p| (p.name(), p.status()))
    }

    /// Every region's distance from this edge, for metrics (empty without `[geo]`).
    pub fn region_statuses(&self) -> Vec<crate::locality::RegionStatus<'_>> {
        self.geo.as_ref().map(|g| g.statuses()).unwrap_or_default()
    }
}

/// One request as the phases pass it along: who asked, and what `respond` must
/// know of the phases' decisions. Each phase's own product (`Admitted`, `Route`,
/// `Cached`) is returned by it and handed on, not stored here.
pub struct Cx<'p> {
    started: Instant,
    /// The client's protocol version (the response gets it back).
    version: Version,
    id: HeaderValue,
    /// The W3C trace this request belongs to (continued or started here).
    trace: trace::Trace,
    peer: Peer,
    /// The chosen pool's name for logs and metrics; `none` until `route`.
    backend: &'p str,
    /// Where `select` placed a regional pool's client.
    placed: Option<(&'p Geo, Placed)>,
    /// A sticky pool's pin, for `respond` to remember where the user went.
    sticky: Option<sticky::Pin<'p>>,
    /// A split route's chosen version, for `respond` to count and guard.
    gray: Option<gray::Chosen<'p>>,
    /// A compressing route's view of what the client accepts, for `respond`.
    compress: Option<compress::Asked<'p>>,
    /// The access log's line for this request, when the log is on.
    log: Option<Box<crate::access_log::Record>>,
    /// The request body's bytes as they are read, for that line.
    request_bytes: Option<Arc<std::sync::atomic::AtomicU64>>,
    /// A gRPC request: edge's own errors become trailers-only gRPC answers.
    grpc: bool,
}

impl Cx<'_> {
    /// Rewrites `req` into what the upstream gets (`headers::to_upstream`): the
    /// one place `forward` and `upgrade` both go through.
    fn to_upstream(&self, proxy: &Proxy, host: HeaderValue, req: &mut Request<Body>) {
        headers::to_upstream(req, &self.peer, &proxy.trusted, &self.id, &self.trace, host);
        if let Some(name) = &proxy.client_cert_header {
            headers::set_client_cert(req.headers_mut(), name, self.peer.client_cert.as_ref());
        }
    }
}

/// A phase's verdict on whether the request goes on.
pub enum Flow {
    Continue,
    /// Answered here, by edge; the request goes no further.
    Answer(Box<Response<Body>>),
}

/// What reached `respond` without an error.
pub enum Reply {
    /// From the upstream (or the cache, on its behalf).
    Forwarded(Response<Body>),
    /// Made by a phase that stopped the request (`Flow::Answer`).
    Answered(Response<Body>),
}

/// Serves one request end to end: the phases in order. Every phase may stop it
/// with an error; `respond` turns whatever came out into the client's answer.
pub async fn handle(
    proxy: &Proxy,
    metrics: &Metrics,
    peer: Peer,
    mut req: Request<Body>,
) -> Response<Body> {
    let mut cx = Cx::new(peer, &req, proxy.access.is_some());
    let reply = async {
        admit::early_data(&cx, metrics, &req)?;
        let mut admitted = admit::admit(proxy, &cx, &mut req).await?;
        if let Some(r) = cx.log.as_mut() {
            r.client = Some(admitted.client);
        }
        let route = route::route(proxy, &mut cx, &admitted, &mut req).await?;
        if let Flow::Answer(resp) = limit::limit(proxy, &cx, &admitted, &route, &req).await {
            return Ok(Reply::Answered(*resp));
        }
        let cached = cache::cache(proxy, &cx, &admitted, &route, &mut req).await;
        select::select(proxy, &mut cx, &admitted, &route, &mut req).await;
        let resp = match admitted.upgrade.take() {
            None => forward::forward(proxy, &cx, admitted, &route, cached, req).await?,
            // In place of forward: the backend's 101 (with a tunnel for the
            // listener) or its refusal, which stays plain HTTP.
            Some(offer) => {
                upgrade::upgrade(proxy, &cx, metrics, admitted, &route, offer, req).await?
            }
        };
        Ok(Reply::Forwarded(resp))
    }
    .await;
    respond::respond(&mut cx, metrics, proxy.access.as_ref(), reply).await
}

impl Proto {
    pub fn of(version: Version) -> Self {
        match version {
            Version::HTTP_2 => Proto::H2,
            Version::HTTP_3 => Proto::H3,
            _ => Proto::H1,
        }
    }
}
