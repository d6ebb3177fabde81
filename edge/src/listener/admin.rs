//! The admin listener over plain HTTP/1.1: `/healthz` and `/metrics` for
//! anyone who reaches it; the privileged paths — `GET /status` (JSON),
//! `GET /config` (effective, secrets redacted), `POST /reload`,
//! `POST /cache/purge` and the status page `GET /` — need
//! `Authorization: Bearer TOKEN` (or `?token=` for the page) when
//! `admin_token_file` is set, and answer loopback peers only when it is not.

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use super::{accept_backoff, Shared};
use crate::body::Body;

pub async fn run(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = shared.draining.cancelled() => return,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                shared.slots.accept_failed(&e, &shared.metrics, "admin");
                if let Some(pause) = accept_backoff(&e) {
                    tokio::time::sleep(pause).await;
                }
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let shared = shared.clone();
                async move {
                    let path = req.uri().path();
                    if !matches!(path, "/healthz" | "/metrics") {
                        if let Err(refused) = authorized(&shared, peer.ip(), &req) {
                            return Ok::<_, Infallible>(*refused);
                        }
                    }
                    let split_route = path
                        .strip_prefix("/routes/")
                        .and_then(|r| r.strip_suffix("/split"))
                        .map(percent_decode);
                    if let Some(name) = split_route {
                        return Ok(split(&shared, &name, req).await);
                    }
                    Ok::<_, Infallible>(match path {
                        "/cache/purge" => purge(&shared, &req).await,
                        "/reload" => reload(&shared, &req).await,
                        "/status" => json(StatusCode::OK, &status(&shared)),
                        "/config" => effective_config(&shared, &req),
                        "/" => text(
                            StatusCode::OK,
                            "text/html; charset=utf-8",
                            Bytes::from_static(STATUS_PAGE.as_bytes()),
                        ),
                        _ => route(&shared, &req),
                    })
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "admin connection ended with an error");
            }
        });
    }
}

fn route(shared: &Shared, req: &Request<Incoming>) -> Response<Body> {
    let (status, content_type, body) = match req.uri().path() {
        "/healthz" if shared.withdrawn.is_cancelled() || shared.draining.is_cancelled() => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            Bytes::from_static(b"draining\n"),
        ),
        "/healthz" => (StatusCode::OK, "text/plain", Bytes::from_static(b"ok\n")),
        "/metrics" => (StatusCode::OK, "text/plain; version=0.0.4", {
            let proxy = shared.proxy.load();
            shared.metrics.refresh_pools(proxy.pool_statuses());
            shared.metrics.refresh_regions(&proxy.region_statuses());
            if let Some(cache) = &shared.cache {
                cache.refresh_metrics();
            }
            Bytes::from(shared.metrics.encode())
        }),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            Bytes::from_static(b"not found; try /healthz, /metrics, /status, /config or /\n"),
        ),
    };
    text(status, content_type, body)
}

/// The status page: plain HTML and CSS, no external assets; its script polls
/// `/status` (with the page's `?token=`, when it has one).
const STATUS_PAGE: &str = include_str!("status.html");

/// Who may use a privileged path: with a token, whoever presents it; without,
/// loopback peers only (the admin listener bound to a management network with
/// no token must not hand out reloads and endpoint lists).
fn allowed(peer: IpAddr, token: Option<&str>, presented: Option<&str>) -> Result<(), StatusCode> {
    match token {
        Some(t) if presented.is_some_and(|p| constant_time_eq(p.as_bytes(), t.as_bytes())) => {
            Ok(())
        }
        Some(_) => Err(StatusCode::UNAUTHORIZED),
        None if peer.is_loopback() || peer.to_canonical().is_loopback() => Ok(()),
        None => Err(StatusCode::FORBIDDEN),
    }
}

/// Compares without stopping at the first difference (no timing oracle).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn authorized(
    shared: &Shared,
    peer: IpAddr,
    req: &Request<Incoming>,
) -> Result<(), Box<Response<Body>>> {
    let bearer = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let query = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("token="));
    let token = shared.config.admin_token.as_ref().map(|t| t.expose());
    allowed(peer, token, bearer.or(query)).map_err(|status| {
        let why = if status == StatusCode::UNAUTHORIZED {
            "a bearer token is required (Authorization: Bearer TOKEN)\n"
        } else {
            "only loopback peers may use this without admin_token_file\n"
        };
        let mut resp = text(status, "text/plain", Bytes::from_static(why.as_bytes()));
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
        }
        Box::new(resp)
    })
}

/// `POST /reload`: the same reload as SIGHUP; 200 when it took, 409 with the
/// reasons when it was refused (the running config keeps serving).
async fn reload(shared: &Shared, req: &Request<Incoming>) -> Response<Body> {
    if req.method() != http::Method::POST {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            Bytes::from_static(b"use POST\n"),
        );
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    if shared.reload_requests.send(tx).await.is_err() {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            Bytes::from_static(b"shutting down\n"),
        );
    }
    match rx.await {
        Ok(Ok(())) => json(StatusCode::OK, &serde_json::json!({ "reloaded": true })),
        Ok(Err(reason)) => json(
            StatusCode::CONFLICT,
            &serde_json::json!({ "reloaded": false, "error": reason }),
        ),
        Err(_) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            Bytes::from_static(b"shutting down\n"),
        ),
    }
}

/// `GET /config`: the config last loaded (at start or by the last reload that
/// took) after defaults, secrets redacted, and the keys of it that wait for a
/// restart.
fn effective_config(shared: &Shared, req: &Request<Incoming>) -> Response<Body> {
    if req.method() != http::Method::GET {
        return problem(StatusCode::METHOD_NOT_ALLOWED, "use GET".to_owned());
    }
    let loaded = shared.loaded.load();
    let body = serde_json::json!({
        "restart_pending": loaded.restart_pending,
        "config": crate::config::effective::to_json(&loaded.config),
    });
    json(StatusCode::OK, &body)
}

/// Largest `PUT /routes/NAME/split` body read.
const MAX_SPLIT_BODY: usize = 16 * 1024;

/// `GET /routes/NAME/split`: the split's versions, weights in effect and guard
/// state (with why it rolled back); `PUT` with `{"TAG": WEIGHT, ...}` sets
/// weights live and resets the guard.
async fn split(shared: &Shared, name: &str, req: Request<Incoming>) -> Response<Body> {
    let store = shared.proxy.load().gray_store();
    if req.method() == http::Method::PUT {
        use http_body_util::BodyExt as _;
        let body = http_body_util::Limited::new(req.into_body(), MAX_SPLIT_BODY);
        let bytes = match body.collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return problem(StatusCode::BAD_REQUEST, format!("body: {e}")),
        };
        let weights: std::collections::BTreeMap<String, u32> = match serde_json::from_slice(&bytes)
        {
            Ok(w) => w,
            Err(e) => {
                let reason = format!("expected {{\"TAG\": WEIGHT, ...}}: {e}");
                return problem(StatusCode::BAD_REQUEST, reason);
            }
        };
        let weights: Vec<(String, u32)> = weights.into_iter().collect();
        if let Err(reason) = store.set_weights(name, &weights, &shared.metrics) {
            let status = match store.view(name) {
                None => StatusCode::NOT_FOUND,
                Some(_) => StatusCode::UNPROCESSABLE_ENTITY,
            };
            return problem(status, reason);
        }
    } else if req.method() != http::Method::GET {
        return problem(StatusCode::METHOD_NOT_ALLOWED, "use GET or PUT".to_owned());
    }
    let Some(v) = store.view(name) else {
        return problem(
            StatusCode::NOT_FOUND,
            format!("no split route named {name:?}"),
        );
    };
    let versions: Vec<serde_json::Value> = v
        .versions
        .iter()
        .map(
            |(tag, pool, weight)| serde_json::json!({ "tag": tag, "pool": pool, "weight": weight }),
        )
        .collect();
    let state = match (v.guarded, v.rolled_back) {
        (false, _) => "unguarded",
        (true, false) => "serving",
        (true, true) => "rolled_back",
    };
    let step = v
        .step
        .map(|(at, of)| serde_json::json!({ "at": at, "of": of }));
    let body = serde_json::json!({
        "route": name, "versions": versions, "state": state, "why": v.why, "step": step,
    });
    json(StatusCode::OK, &body)
}

fn problem(status: StatusCode, reason: String) -> Response<Body> {
    json(status, &serde_json::json!({ "error": reason }))
}

/// `GET /status`: what this edge runs and how its upstreams are.
fn status(shared: &Shared) -> serde_json::Value {
    use serde_json::json;
    let proxy = shared.proxy.load();
    let pools: Vec<serde_json::Value> = proxy
        .pool_statuses()
        .map(|(name, p)| {
            let endpoints: Vec<serde_json::Value> = p
                .endpoints
                .iter()
                .map(|e| {
                    json!({
                        "endpoint": e.endpoint,
                        "healthy": e.healthy,
                        "breaker": format!("{:?}", e.breaker).to_lowercase(),
                        "in_flight": e.in_flight,
                        "latency_ms": e.ewma.as_secs_f64() * 1000.0,
                        "ejections": e.ejections,
                    })
                })
                .collect();
            json!({
                "name": name,
                "healthy": p.endpoints.iter().filter(|e| e.healthy).count(),
                "endpoints": endpoints,
                "retries": p.retries,
                "dns": p.dns.as_ref().map(|d| json!({
                    "failures": d.failures,
                    "last_success_age_s": d.last_success_age.as_secs_f64(),
                })),
            })
        })
        .collect();
    let regions: Vec<serde_json::Value> = proxy
        .region_statuses()
        .iter()
        .map(|r| {
            json!({
                "region": r.region,
                "rtt_ms": r.measured.map(|(d, _)| d.as_secs_f64() * 1000.0),
                "distance_ms": r.distance.map(|d| d.as_secs_f64() * 1000.0),
            })
        })
        .collect();
    let listeners: Vec<serde_json::Value> = shared
        .listeners
        .iter()
        .map(|(kind, addr)| json!({ "kind": kind, "addr": addr.to_string() }))
        .collect();
    let cache = shared.cache.as_ref().map(|c| {
        let (entries, bytes) = c.l1_usage();
        json!({ "l1_entries": entries, "l1_bytes": bytes })
    });
    let redis = proxy
        .redis()
        .map(|r| json!({ "name": r.name(), "connected": r.connected(), "degraded": r.degraded() }));
    let state = if shared.draining.is_cancelled() {
        "draining"
    } else if shared.withdrawn.is_cancelled() {
        "withdrawn"
    } else {
        "serving"
    };
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "commit": env!("EDGE_COMMIT"),
        "state": state,
        "uptime_s": shared.started.elapsed().as_secs(),
        "listeners": listeners,
        "pools": pools,
        "regions": regions,
        "cache": cache,
        "redis": redis,
    })
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut body = serde_json::to_vec_pretty(value).unwrap_or_default();
    body.push(b'\n');
    text(status, "application/json", Bytes::from(body))
}

fn text(status: StatusCode, content_type: &str, body: Bytes) -> Response<Body> {
    let mut resp = Response::new(Body::full(body));
    *resp.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        resp.headers_mut().insert(CONTENT_TYPE, v);
    }
    resp
}

/// `POST /cache/purge?url=URL` drops one URL (all its variants) from L1 and L2;
/// `POST /cache/purge?prefix=URL-PREFIX` every URL starting with the prefix.
/// URLs are absolute (`https://host/path?query`) and percent-encoded in the query.
async fn purge(shared: &Shared, req: &Request<Incoming>) -> Response<Body> {
    let reply = |status, msg: String| text(status, "text/plain", Bytes::from(msg + "\n"));
    if req.method() != http::Method::POST {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "use POST".into());
    }
    let Some(cache) = &shared.cache else {
        return reply(StatusCode::NOT_FOUND, "the cache is not enabled".into());
    };
    let query = req.uri().query().unwrap_or("");
    let param = |name: &str| {
        query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| percent_decode(v))
    };
    if let Some(url) = param("url") {
        let Some(key) = crate::cache::key::from_url(&url) else {
            return reply(
                StatusCode::BAD_REQUEST,
                format!("not an absolute http(s) URL: {url:?}"),
            );
        };
        cache.purge_key(&key).await;
        tracing::info!(key, "cache purge by URL");
        return reply(StatusCode::OK, format!("purged {key}"));
    }
    if let Some(prefix) = param("prefix") {
        let Some(key) = crate::cache::key::prefix_from_url(&prefix) else {
            return reply(
                StatusCode::BAD_REQUEST,
                format!("not an absolute http(s) URL prefix: {prefix:?}"),
            );
        };
        tracing::info!(prefix = key, "cache purge by prefix");
        return match cache.purge_prefix(&key).await {
            Ok(()) => reply(StatusCode::OK, format!("purged prefix {key}")),
            Err(e) => reply(StatusCode::BAD_GATEWAY, format!("prefix {key}: {e}")),
        };
    }
    reply(
        StatusCode::BAD_REQUEST,
        "give url=URL or prefix=URL-PREFIX".into(),
    )
}

/// `%XX` and `+` decoding of one query value; invalid escapes are kept as typed.
fn percent_decode(v: &str) -> String {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match b[i] {
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn percent_decoding() {
        assert_eq!(
            super::percent_decode("https%3A%2F%2Fa%2Fb%3Fc%3D1"),
            "https://a/b?c=1"
        );
        assert_eq!(super::percent_decode("%zz%4"), "%zz%4");
    }
}

#[cfg(test)]
mod access {
    use super::{allowed, constant_time_eq};
    use http::StatusCode;
    use std::net::IpAddr;

    #[test]
    fn privileged_paths_need_the_token_or_a_loopback_peer() {
        let lo: IpAddr = "127.0.0.1".parse().expect("ip");
        let lo6: IpAddr = "::1".parse().expect("ip");
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().expect("ip");
        let far: IpAddr = "192.0.2.9".parse().expect("ip");
        // No token configured: loopback only.
        assert_eq!(allowed(lo, None, None), Ok(()));
        assert_eq!(allowed(lo6, None, None), Ok(()));
        assert_eq!(allowed(mapped, None, None), Ok(()));
        assert_eq!(allowed(far, None, Some("x")), Err(StatusCode::FORBIDDEN));
        // A token configured: required from everyone, loopback too.
        let t = Some("0123456789abcdef");
        assert_eq!(allowed(far, t, Some("0123456789abcdef")), Ok(()));
        assert_eq!(allowed(lo, t, None), Err(StatusCode::UNAUTHORIZED));
        assert_eq!(
            allowed(lo, t, Some("0123456789abcdeX")),
            Err(StatusCode::UNAUTHORIZED)
        );
        assert_eq!(
            allowed(lo, t, Some("0123456789abcde")),
            Err(StatusCode::UNAUTHORIZED)
        );
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
    }
}
