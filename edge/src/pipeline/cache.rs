//! Phase `cache`: whether a request goes through the cache, and under which key.
//! Headers that would change the answer without being in the key are removed
//! here (no unkeyed-header poisoning), before `forward` writes edge's own
//! forwarding headers. The lookup itself happens in `forward`, because the
//! cache also coalesces, fills and revalidates around the upstream exchange.

use std::sync::Arc;

use http::Request;

use super::admit::Admitted;
use super::route::Route;
use super::{Cx, Proxy};
use crate::body::Body;
use crate::cache::{Cache, RouteCache};

/// A request that is served through the cache.
pub struct Cached<'p> {
    pub store: &'p Arc<Cache>,
    pub key: String,
    pub route: RouteCache,
}

/// `Some` when the cache is on and the route is cacheable (never for an upgrade).
pub async fn cache<'p>(
    proxy: &'p Proxy,
    cx: &Cx<'_>,
    admitted: &Admitted,
    route: &Route<'_>,
    req: &mut Request<Body>,
) -> Option<Cached<'p>> {
    if admitted.upgrade.is_some() {
        return None;
    }
    let (store, route) = proxy.cache.as_ref().zip(route.cache)?;
    crate::cache::strip_unkeyed(req.headers_mut());
    crate::cache::announce_surrogate(req.headers_mut());
    let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let host = admitted.host.value.to_str().unwrap_or_default();
    let key = crate::cache::key::primary(cx.peer.tls, host, target);
    Some(Cached { store, key, route })
}
