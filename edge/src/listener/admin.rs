//! The admin listener: `/healthz`, `/metrics` and `POST /cache/purge` over plain
//! HTTP/1.1. Bind it to loopback or a management network; it has no
//! authentication.

use std::convert::Infallible;
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
        let stream = match accepted {
            Ok((s, _)) => s,
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
                    if req.uri().path() == "/cache/purge" {
                        return Ok::<_, Infallible>(purge(&shared, &req).await);
                    }
                    Ok::<_, Infallible>(route(&shared, &req))
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
            Bytes::from_static(b"not found; try /healthz or /metrics\n"),
        ),
    };
    text(status, content_type, body)
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
