//! The request pipeline: one path for HTTP/1.1, HTTP/2 and HTTP/3.
//!
//! `handle` is the whole order a request goes through — request id, host, route,
//! forward, response headers, metrics — readable top to bottom. Listeners call it
//! with an `http::Request<Body>` and write back what it returns; it never fails:
//! every error becomes a response here and nowhere else.

mod authority;
mod headers;
mod path;
mod route;

use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, Request, Response, Version};
use http_body::Body as _;
use ipnet::IpNet;
use upstream::Pool;

pub use headers::{request_id, strip_hop_by_hop, to_upstream, Peer, REQUEST_ID};
pub use route::Routes;

use crate::body::{Body, BodyLimits, Limited};
use crate::cache::Cache;
use crate::config::Config;
use crate::error::{ErrorKind, ProxyError, Side};
use crate::locality::Geo;
use crate::metrics::{Metrics, Proto};

/// Everything the pipeline needs, built from one config and swapped whole on reload.
pub struct Proxy {
    routes: Routes,
    pools: Vec<Arc<Pool<Body>>>,
    trusted: Vec<IpNet>,
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
}

/// The debug header naming the client's region, the chosen region and endpoint.
const X_EDGE_GEO: http::HeaderName = http::HeaderName::from_static("x-edge-geo");

/// The backend label when no pool was chosen.
const NO_BACKEND: &str = "none";

impl Proxy {
    /// Builds every pool; a DNS pool resolves once first, and a failure of that
    /// first lookup is an error (there is no last-known-good set yet).
    pub async fn build(config: &Config) -> Result<Self, crate::Error> {
        let geo = match &config.geo {
            Some(g) => Some(Arc::new(
                Geo::new(g).map_err(|e| crate::Error::Setup(format!("geo: {e}")))?,
            )),
            None => None,
        };
        let mut pools = Vec::with_capacity(config.pools.len());
        for p in &config.pools {
            let pool = Arc::new(crate::server::build_pool(p)?);
            let discover = |dns: &upstream::discovery::DnsConfig| {
                let dns = dns.clone();
                async move {
                    upstream::discovery::watch(dns).await.map_err(|source| {
                        crate::Error::Discovery {
                            pool: p.name().to_owned(),
                            source,
                        }
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
        let routes = Routes::new(&config.routes, |name| {
            config.pools.iter().position(|p| p.name() == name)
        });
        Ok(Self {
            routes,
            pools,
            trusted: config.trusted_proxies.clone(),
            max_headers: config.client.max_headers,
            max_header_bytes: config.client.max_header_bytes,
            path: path::Policy {
                normalize: config.client.normalize_path,
                separators: config.client.path_encoded_separators,
            },
            geo,
            cache: None,
            body: BodyLimits {
                max_bytes: config.client.max_body_bytes,
                idle: config.client.body_idle_timeout,
                min_rate: config.client.min_body_rate,
                grace: config.client.body_rate_grace,
            },
        })
    }

    /// Serves cacheable routes through `cache` (when `Some`).
    pub fn with_cache(mut self, cache: Option<Arc<Cache>>) -> Self {
        self.cache = cache;
        self
    }
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

/// Serves one request end to end.
pub async fn handle(
    proxy: &Proxy,
    metrics: &Metrics,
    peer: Peer,
    req: Request<Body>,
) -> Response<Body> {
    let started = Instant::now();
    let version = req.version();
    let id = headers::request_id(req.headers());
    let (resp, backend) = match forward(proxy, metrics, peer, &id, req).await {
        Ok((mut resp, backend)) => {
            let upstream_version = resp.version();
            let h = resp.headers_mut();
            strip_hop_by_hop(h);
            h.insert(REQUEST_ID, id);
            headers::append_via(h, upstream_version);
            // The version is per hop: the client gets its own back.
            *resp.version_mut() = version;
            (resp, backend)
        }
        Err((e, backend)) => {
            log_error(&e, &id, backend);
            metrics.error(e.kind.as_str(), e.side().as_str());
            (e.to_response(&id), backend)
        }
    };
    metrics.observe(
        Proto::of(version),
        backend,
        resp.status(),
        started.elapsed(),
    );
    resp
}

/// Host → route → upstream. Returns the pool name for metrics either way.
async fn forward<'p>(
    proxy: &'p Proxy,
    metrics: &Metrics,
    peer: Peer,
    id: &HeaderValue,
    mut req: Request<Body>,
) -> Result<(Response<Body>, &'p str), (ProxyError, &'p str)> {
    headers::within_limits(req.headers(), proxy.max_headers, proxy.max_header_bytes)
        .map_err(|e| (e, NO_BACKEND))?;
    headers::framing(req.headers()).map_err(|e| (e, NO_BACKEND))?;
    let host = authority::of(&req, peer.tls).map_err(|e| (e, NO_BACKEND))?;
    // A host the connection's certificate does not vouch for was sent here by
    // mistake (a reused connection, a hostile SNI/Host split): RFC 9110 421.
    if peer.sni.is_some_and(|sni| !sni.admits(&host.host)) {
        return Err((
            ProxyError::new(
                ErrorKind::MisdirectedRequest,
                "this host is not served on this connection",
            ),
            NO_BACKEND,
        ));
    }
    path::normalize(&mut req, proxy.path).map_err(|e| (e, NO_BACKEND))?;
    let matched = proxy.routes.find_route(&host.host, req.uri().path());
    let pool = matched
        .and_then(|m| proxy.pools.get(m.pool))
        .ok_or_else(|| {
            (
                ProxyError::new(ErrorKind::NoRoute, "no route for this host and path"),
                NO_BACKEND,
            )
        })?;
    let max_bytes = matched.and_then(|m| m.max_body_bytes);
    limit_body(&mut req, proxy.body, max_bytes).map_err(|e| (e, pool.name()))?;
    // Where the client is, for hashing and geo (only when one needs it): the
    // peer, or the address a trusted proxy in front of us names; never what an
    // untrusted peer claims. Read before `to_upstream` rewrites X-Forwarded-For.
    let geo = proxy.geo.as_ref().filter(|_| pool.is_regional());
    let client = (pool.wants_hash_key() || geo.is_some())
        .then(|| headers::client_ip(req.headers(), peer, &proxy.trusted));
    let cache = proxy.cache.as_ref().zip(matched.and_then(|m| m.cache));
    let key = cache.map(|_| cache_key(&mut req, peer, &host.value));
    headers::to_upstream(&mut req, peer, &proxy.trusted, id, host.value);
    if let Some(client) = client.filter(|_| pool.wants_hash_key()) {
        let ip = match client {
            std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            std::net::IpAddr::V6(v6) => v6.octets(),
        };
        req.extensions_mut()
            .insert(upstream::HashKey(upstream::hash_ring::key(&ip)));
    }
    let placed = geo.zip(client).map(|(geo, client)| {
        let placed = geo.place(client);
        req.extensions_mut().insert(placed.locality.clone());
        (geo, placed)
    });
    // Both futures are boxed: inline, the cache's made every request's future
    // 13.8 KB, copied whole by hyper and by each layer above (2.9 KB boxed).
    if let (Some((cache, route)), Some(key)) = (cache, key) {
        return match Box::pin(cache.serve(pool, key, req, route)).await {
            Ok(mut resp) => {
                if let Some((geo, placed)) = &placed {
                    note_region(geo, placed, metrics, pool.name(), &mut resp);
                }
                Ok((resp, pool.name()))
            }
            Err(e) => Err((e, pool.name())),
        };
    }
    match Box::pin(pool.send(req)).await {
        Ok(mut resp) => {
            if let Some((geo, placed)) = placed {
                note_region(geo, &placed, metrics, pool.name(), &mut resp);
            }
            Ok((resp.map(Body::Upstream), pool.name()))
        }
        Err(e) => Err((ProxyError::from(e), pool.name())),
    }
}

/// Puts a request body under the client limits (`max_bytes` is the route's own
/// size limit, when it has one). A declared length past the limit is refused
/// before a byte is read, so it never reaches the origin; a body-less request
/// is left alone.
fn limit_body(
    req: &mut Request<Body>,
    limits: BodyLimits,
    max_bytes: Option<u64>,
) -> Result<(), ProxyError> {
    if req.body().is_end_stream() {
        return Ok(());
    }
    let limits = BodyLimits {
        max_bytes: max_bytes.unwrap_or(limits.max_bytes),
        ..limits
    };
    if req.body().size_hint().lower() > limits.max_bytes {
        return Err(ProxyError::new(
            ErrorKind::BodyTooLarge,
            "request body too large",
        ));
    }
    let body = std::mem::take(req.body_mut());
    *req.body_mut() = Body::Limited(Box::new(Limited::new(body, limits)));
    Ok(())
}

/// Counts where a regional pool's request went, and names it in the debug
/// header when that is on.
fn note_region<B>(
    geo: &Geo,
    placed: &crate::locality::Placed,
    metrics: &Metrics,
    backend: &str,
    resp: &mut Response<B>,
) {
    let Some(served) = resp.extensions().get::<upstream::Served>() else {
        return;
    };
    let client = geo.name(placed.client);
    let region = geo.name(served.region);
    metrics.region_request(backend, client, region);
    if geo.debug_header {
        let value = format!(
            "client-region={client}; by={}; region={region}; endpoint={}",
            placed.by, served.endpoint
        );
        if let Ok(v) = HeaderValue::from_str(&value) {
            resp.headers_mut().insert(X_EDGE_GEO, v);
        }
    }
}

/// The request's cache key; headers that would change the answer without being
/// in the key are removed first (no unkeyed-header poisoning).
fn cache_key(req: &mut Request<Body>, peer: Peer, host: &HeaderValue) -> String {
    crate::cache::strip_unkeyed(req.headers_mut());
    crate::cache::announce_surrogate(req.headers_mut());
    let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    crate::cache::key::primary(peer.tls, host.to_str().unwrap_or_default(), target)
}

fn log_error(e: &ProxyError, id: &HeaderValue, backend: &str) {
    let id = String::from_utf8_lossy(id.as_bytes());
    match e.side() {
        Side::Client => {
            let cause = error_chain(e);
            tracing::debug!(request_id = %id, backend, side = "client", kind = e.kind.as_str(), status = e.kind.status().as_u16(), "{e}{cause}");
        }
        Side::Upstream | Side::Internal => {
            let cause = error_chain(e);
            let side = e.side().as_str();
            tracing::warn!(request_id = %id, backend, side, kind = e.kind.as_str(), "{e}{cause}");
        }
    }
}

/// `: cause: cause's cause ...` for a log line.
pub fn error_chain(mut e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = String::new();
    while let Some(next) = e.source() {
        out.push_str(": ");
        out.push_str(&next.to_string());
        e = next;
    }
    out
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
