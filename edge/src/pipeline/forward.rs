//! Phase `forward`: the upstream request (hop-by-hop headers out, forwarding
//! headers owned by edge, canonical Host) sent through the route's pool, or
//! through the cache when `cache` said so. Retries and failover are the pool's.
//! Each request forwarded is counted for the pool's forecast (cache hits too).

use http::{Request, Response};

use super::admit::Admitted;
use super::cache::Cached;
use super::route::Route;
use super::{Cx, Proxy};
use crate::body::Body;
use crate::error::ProxyError;

/// Rewrites `req` for the upstream and exchanges it.
pub async fn forward(
    proxy: &Proxy,
    cx: &Cx<'_>,
    admitted: Admitted,
    route: &Route<'_>,
    cached: Option<Cached<'_>>,
    mut req: Request<Body>,
) -> Result<Response<Body>, ProxyError> {
    // The forecast's whole cost on the request path.
    if let Some(rate) = route.rate {
        rate.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    cx.to_upstream(proxy, admitted.host.value, &mut req);
    // Both futures are boxed: inline, the cache's made every request's future
    // 13.8 KB, copied whole by hyper and by each layer above (2.9 KB boxed).
    if let Some(c) = cached {
        return Box::pin(c.store.serve(route.pool, c.key, req, c.route)).await;
    }
    match Box::pin(route.pool.send(req)).await {
        Ok(resp) => Ok(resp.map(Body::Upstream)),
        Err(e) => Err(ProxyError::from(e)),
    }
}
