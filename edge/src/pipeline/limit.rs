//! Phase `limit`: where rate limits will decide, with the route and the client
//! address in hand, whether a request goes on or is answered here. Empty for now:
//! every request continues.

use http::Request;

use super::admit::Admitted;
use super::route::Route;
use super::{Cx, Flow};
use crate::body::Body;

/// Lets every request through (no limits are configured yet).
pub async fn limit(
    _cx: &Cx<'_>,
    _admitted: &Admitted,
    _route: &Route<'_>,
    _req: &Request<Body>,
) -> Flow {
    Flow::Continue
}
