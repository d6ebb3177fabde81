//! Phase `select`: the hints the pool's balancer chooses an endpoint by — the
//! client's hash key for consistent hashing, a sticky pool's pinned endpoint
//! (see `sticky`), and its geo locality for a regional pool. It attaches them
//! as request extensions; the choice is the pool's.

use http::Request;

use super::admit::Admitted;
use super::route::Route;
use super::{Cx, Proxy};
use crate::body::Body;

/// Adds the hash key, sticky pin and locality the route's pool wants (only those), and notes
/// in `cx` where a regional pool's client was placed.
pub async fn select<'p>(
    proxy: &'p Proxy,
    cx: &mut Cx<'p>,
    admitted: &Admitted,
    route: &Route<'p>,
    req: &mut Request<Body>,
) {
    if route.pool.wants_hash_key() {
        let ip = match admitted.client {
            std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            std::net::IpAddr::V6(v6) => v6.octets(),
        };
        req.extensions_mut()
            .insert(upstream::HashKey(upstream::hash_ring::key(&ip)));
    }
    if let Some(sticky) = route.sticky {
        cx.sticky = Some(sticky.select(admitted.client, req).await);
    }
    if let Some(geo) = proxy.geo.as_deref().filter(|_| route.pool.is_regional()) {
        let placed = geo.place(admitted.client);
        req.extensions_mut().insert(placed.locality.clone());
        cx.placed = Some((geo, placed));
    }
}
