//! Phase `limit`: where rate limits will decide, with the route and the client
//! address in hand, whether a request goes on or is answered here (429), before
//! the cache or the origin sees it. Its rules and counters will live in `Proxy`
//! (rules, swapped on reload) beside a store handed in like the cache (counters,
//! kept across reloads). Empty for now: every request continues.

use http::Request;

use super::admit::Admitted;
use super::route::Route;
use super::{Cx, Flow, Proxy};
use crate::body::Body;

/// Lets every request through (no limits are configured yet).
pub async fn limit(
    _proxy: &Proxy,
    _cx: &Cx<'_>,
    _admitted: &Admitted,
    _route: &Route<'_>,
    _req: &Request<Body>,
) -> Flow {
    Flow::Continue
}
