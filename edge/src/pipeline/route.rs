//! Phase `route`: host and path prefix to a route and its pool (first match in
//! config order wins) — for a split route, the version `gray` picks — and the
//! request body put under the route's limits.

use std::sync::Arc;

use http::Request;
use http_body::Body as _;
use upstream::Pool;

use super::admit::Admitted;
use super::{Cx, Proxy};
use crate::body::{Body, BodyLimits, Limited};
use crate::cache::RouteCache;
use crate::config;
use crate::error::{ErrorKind, ProxyError};

/// The route a request took, for the phases after `route`.
pub struct Route<'p> {
    pub pool: &'p Arc<Pool<Body>>,
    /// `Some` when the route's responses go through the cache.
    pub cache: Option<RouteCache>,
    /// `Some` when the pool keeps users on one endpoint.
    pub sticky: Option<&'p super::sticky::Sticky>,
    /// The pool's request counter, when `[forecast]` is on.
    pub rate: Option<&'p std::sync::atomic::AtomicU64>,
}

/// A request from a trusted proxy (whose version tag is honoured).
fn from_trusted(proxy: &Proxy, cx: &Cx<'_>) -> bool {
    proxy.trusted.iter().any(|n| n.contains(&cx.peer.ip))
}

/// Finds the request's route (404 without one) and limits its body (413 for a
/// declared length past the limit); names the pool in `cx` for logs and metrics.
pub async fn route<'p>(
    proxy: &'p Proxy,
    cx: &mut Cx<'p>,
    admitted: &Admitted,
    req: &mut Request<Body>,
) -> Result<Route<'p>, ProxyError> {
    let matched = proxy
        .routes
        .find_route(&admitted.host.host, req.uri().path());
    let mut matched = matched
        .ok_or_else(|| ProxyError::new(ErrorKind::NoRoute, "no route for this host and path"))?;
    if matched.require_client_cert && cx.peer.client_cert.is_none() {
        return Err(ProxyError::new(
            ErrorKind::ClientCertRequired,
            "this route needs a client certificate",
        ));
    }
    if let Some(split) = matched.split {
        let trusted = from_trusted(proxy, cx);
        let (chosen, pool) = split.choose(req, admitted.client, trusted, proxy.geo.as_deref());
        cx.gray = Some(chosen);
        matched.pool = pool;
    }
    let pool = proxy
        .pools
        .get(matched.pool)
        .ok_or_else(|| ProxyError::new(ErrorKind::NoRoute, "no route for this host and path"))?;
    cx.backend = pool.name();
    cx.compress = matched.compress.map(|c| super::compress::asked(c, req));
    super::hints::by_route(matched.early_hints, req);
    if cx.log.is_some() {
        cx.request_bytes = Some(Default::default());
    }
    limit_body(
        req,
        proxy.body,
        matched.max_body_bytes,
        cx.request_bytes.clone(),
    )?;
    Ok(Route {
        pool,
        cache: matched.cache,
        sticky: proxy.sticky.get(matched.pool).and_then(Option::as_ref),
        rate: proxy.rates.get(matched.pool).and_then(Option::as_deref),
    })
}

/// Puts a request body under the client limits (`max_bytes` is the route's own
/// size limit, when it has one). A declared length past the limit is refused
/// before a byte is read, so it never reaches the origin; a body-less request
/// is left alone.
fn limit_body(
    req: &mut Request<Body>,
    limits: BodyLimits,
    max_bytes: Option<u64>,
    counter: Option<Arc<std::sync::atomic::AtomicU64>>,
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
    let mut limited = Limited::new(body, limits);
    if let Some(c) = counter {
        limited = limited.counted(c);
    }
    *req.body_mut() = Body::Limited(Box::new(limited));
    Ok(())
}

pub struct Routes {
    routes: Vec<Entry>,
}

struct Entry {
    host: Option<String>,
    path_prefix: String,
    pool: usize,
    /// `Some` when the route's responses go through the cache.
    cache: Option<RouteCache>,
    max_body_bytes: Option<u64>,
    require_client_cert: bool,
    split: Option<super::gray::Split>,
    compress: Option<config::Compress>,
    early_hints: config::EarlyHints,
}

/// What a request matched: the pool's slot and the route's cache settings.
#[derive(Clone, Copy)]
pub struct Matched<'r> {
    pub pool: usize,
    pub cache: Option<RouteCache>,
    /// The route's own request body limit, if it has one.
    pub max_body_bytes: Option<u64>,
    /// Only a client with a verified certificate may use the route.
    pub require_client_cert: bool,
    /// A split route's versions (`pool` is then the baseline's until chosen).
    pub split: Option<&'r super::gray::Split>,
    /// How the route compresses responses, when it does.
    pub compress: Option<&'r config::Compress>,
    /// Which clients get the backend's 103 Early Hints.
    pub early_hints: config::EarlyHints,
}

impl Routes {
    /// `pool_index` maps a pool name to its slot; config validation guarantees it exists.
    /// A split route's guard is taken from `store` when its split is unchanged.
    /// A split route is not cached: its versions may answer differently.
    pub fn new(
        routes: &[config::Route],
        pool_index: impl Fn(&str) -> Option<usize>,
        store: &super::gray::Store,
    ) -> Self {
        let routes = routes
            .iter()
            .filter_map(|r| {
                let split = match &r.split {
                    Some(s) => Some(super::gray::Split::new(&r.name, s, &pool_index, store)?),
                    None => None,
                };
                Some(Entry {
                    host: r.host.clone(),
                    path_prefix: r.path_prefix.clone(),
                    pool: pool_index(&r.pool)?,
                    cache: (r.cache && split.is_none()).then_some(RouteCache {
                        set_cookie: r.cache_set_cookie,
                        statuses: r.cache_statuses,
                    }),
                    max_body_bytes: r.max_body_bytes,
                    require_client_cert: r.require_client_cert,
                    split,
                    compress: r.compress.clone(),
                    early_hints: r.early_hints,
                })
            })
            .collect();
        Self { routes }
    }

    /// The pool for a request; `host` is already lower-case without port.
    pub fn find(&self, host: &str, path: &str) -> Option<usize> {
        self.find_route(host, path).map(|m| m.pool)
    }

    /// The route for a request, with its cache settings.
    pub fn find_route(&self, host: &str, path: &str) -> Option<Matched<'_>> {
        self.routes
            .iter()
            .find(|r| {
                r.host.as_deref().is_none_or(|h| h == host) && prefix_matches(&r.path_prefix, path)
            })
            .map(|r| Matched {
                pool: r.pool,
                cache: r.cache,
                max_body_bytes: r.max_body_bytes,
                require_client_cert: r.require_client_cert,
                split: r.split.as_ref(),
                compress: r.compress.as_ref(),
                early_hints: r.early_hints,
            })
    }
}

/// `/api` matches `/api`, `/api/` and `/api/x`, not `/apix`.
pub(super) fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(host: Option<&str>, prefix: &str, pool: &str) -> config::Route {
        config::Route {
            name: prefix.to_owned(),
            split: None,
            host: host.map(str::to_owned),
            path_prefix: prefix.to_owned(),
            pool: pool.to_owned(),
            cache: true,
            cache_set_cookie: false,
            max_body_bytes: None,
            cache_statuses: config::CacheStatuses::default(),
            require_client_cert: false,
            compress: None,
            early_hints: config::EarlyHints::All,
        }
    }

    #[test]
    fn first_match_in_order_by_host_and_segment_prefix() {
        let pools = ["api", "static", "default"];
        let routes = Routes::new(
            &[
                route(Some("api.example"), "/", "api"),
                route(None, "/static", "static"),
                route(None, "/", "default"),
            ],
            |name| pools.iter().position(|p| *p == name),
            &Default::default(),
        );
        assert_eq!(routes.find("api.example", "/static/x"), Some(0));
        assert_eq!(routes.find("www.example", "/static/x"), Some(1));
        assert_eq!(routes.find("www.example", "/static"), Some(1));
        assert_eq!(routes.find("www.example", "/staticx"), Some(2));
        assert_eq!(routes.find("www.example", "/"), Some(2));
    }

    #[test]
    fn no_route_when_nothing_matches() {
        let routes = Routes::new(
            &[route(Some("a.example"), "/", "p")],
            |_| Some(0),
            &Default::default(),
        );
        assert_eq!(routes.find("b.example", "/"), None);
    }
}
