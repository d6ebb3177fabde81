//! Phase `respond`: the client's answer — an upstream response with its
//! hop-by-hop headers out and edge's own in (request id, Via, the client's
//! version, the geo debug header, a sticky pool's cookie), compressed when the
//! route says so (`compress`), or an error page — then the log line and the
//! request's metrics. Every request ends here, whatever phase it stopped in.

use std::sync::Arc;

use http::{HeaderValue, Response};

use super::headers::{self, strip_hop_by_hop, REQUEST_ID};
use super::{Cx, Reply};
use crate::access_log::{AccessLog, Logged, Record};
use crate::body::Body;
use crate::chain::error_chain;
use crate::error::{ProxyError, Side};
use crate::locality::{Geo, Placed};
use crate::metrics::{Metrics, Proto};

/// The debug header naming the client's region, the chosen region and endpoint.
const X_EDGE_GEO: http::HeaderName = http::HeaderName::from_static("x-edge-geo");

/// Finishes the response and records the request: metrics now, the access log
/// line when the body has been sent.
pub async fn respond(
    cx: &mut Cx<'_>,
    metrics: &Metrics,
    access: Option<&Arc<AccessLog>>,
    reply: Result<Reply, ProxyError>,
) -> Response<Body> {
    let mut error = "";
    let upstream_failed = matches!(&reply, Err(e) if e.side() == Side::Upstream);
    let resp = match reply {
        Ok(Reply::Forwarded(mut resp)) => {
            if let Some((geo, placed)) = &cx.placed {
                note_region(geo, placed, metrics, cx.backend, &mut resp);
            }
            if let Some(pin) = &cx.sticky {
                let outcome = pin.remember(&mut resp, cx.peer.tls, metrics);
                if let Some(r) = cx.log.as_mut() {
                    r.sticky = outcome;
                }
            }
            let (mut head, body) = resp.into_parts();
            let h = &mut head.headers;
            strip_hop_by_hop(h);
            // A 101 the backend agreed to keeps what makes it one.
            if let Some(tunnel) = head.extensions.get::<super::Tunnel>() {
                tunnel.restore(h);
            }
            h.insert(REQUEST_ID, cx.id.clone());
            headers::append_via(h, head.version);
            // The version is per hop: the client gets its own back.
            head.version = cx.version;
            let resp = Response::from_parts(head, body);
            match &cx.compress {
                Some(asked) => super::compress::apply(asked, metrics, resp),
                None => resp,
            }
        }
        Ok(Reply::Answered(mut resp)) => {
            resp.headers_mut().insert(REQUEST_ID, cx.id.clone());
            *resp.version_mut() = cx.version;
            resp
        }
        Err(e) => {
            log_error(&e, &cx.id, cx.backend);
            metrics.error(e.kind.as_str(), e.side().as_str());
            error = e.kind.as_str();
            if cx.grpc {
                e.to_grpc_response(&cx.id)
            } else {
                e.to_response(&cx.id, &cx.trace.id_hex())
            }
        }
    };
    let head = cx.started.elapsed();
    metrics.observe(Proto::of(cx.version), cx.backend, resp.status(), head);
    if let Some(chosen) = &cx.gray {
        chosen.answered(resp.status(), upstream_failed, head, metrics);
    }
    match (access, cx.log.take()) {
        (Some(log), Some(record)) => logged(cx, log, *record, resp, head, error),
        _ => resp,
    }
}

/// Completes the access log's record with what the answer says and hands the
/// body a way to write it when sent.
fn logged(
    cx: &mut Cx<'_>,
    log: &Arc<AccessLog>,
    mut r: Record,
    resp: Response<Body>,
    head: std::time::Duration,
    error: &'static str,
) -> Response<Body> {
    r.status = resp.status().as_u16();
    r.head_us = crate::access_log::micros(head);
    r.error = error;
    if cx.backend != super::NO_BACKEND {
        r.pool = cx.backend.to_owned();
    }
    if let Some(served) = resp.extensions().get::<upstream::ServedBy>() {
        r.endpoint = Some(served.endpoint.clone());
        r.tries = served.tries;
    }
    if let (Some((geo, _)), Some(served)) =
        (&cx.placed, resp.extensions().get::<upstream::Served>())
    {
        r.region = geo.name(served.region).to_owned();
    }
    let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok());
    r.cache = resp.headers().get("cache-status").cloned();
    if r.status == 429 {
        // The rule's name is the policy's first item: `"NAME";q=..`.
        if let Some(policy) = header("ratelimit-policy") {
            r.limited = policy
                .split(';')
                .next()
                .unwrap_or_default()
                .trim_matches('"')
                .to_owned();
        }
    }
    let (parts, body) = resp.into_parts();
    let body = Body::boxed(Logged::new(
        body,
        r,
        Arc::clone(log),
        cx.started,
        cx.request_bytes.take(),
    ));
    Response::from_parts(parts, body)
}

/// Counts where a regional pool's request went, and names it in the debug
/// header when that is on.
fn note_region<B>(
    geo: &Geo,
    placed: &Placed,
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
