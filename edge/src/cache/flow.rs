//! One request through the cache: look up, judge, and either answer from a
//! layer, revalidate, or fetch (coalesced) and store while streaming.

use std::sync::Arc;
use std::time::Duration;

use http::header::{
    HeaderValue, AGE, CONTENT_LENGTH, ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED, RANGE,
    SET_COOKIE,
};
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt as _;
use upstream::Pool;

use super::coalesce::{self, Leader, Role};
use super::entry::{Entry, VaryList};
use super::key;
use super::l2::L2;
use super::metrics::Outcome;
use super::policy::{self, CacheControl, Times, Use};
use super::tee::{Pending, Tee};
use super::{unix_now, unix_now_ms, vary_values, Cache, Layer, Lookup, RouteCache};
use crate::body::Body;
use crate::error::ProxyError;

pub const CACHE_STATUS: http::HeaderName = http::HeaderName::from_static("cache-status");

/// The cross-edge fetch lock lives at most this long (less if `coalesce_timeout` is).
const EDGE_LOCK_MAX: Duration = Duration::from_secs(2);
/// How often an edge waiting on another edge's fetch looks in L2.
const EDGE_POLL: Duration = Duration::from_millis(20);

type Upstream = Arc<Pool<Body>>;

async fn send(pool: &Upstream, req: Request<Body>) -> Result<Response<Body>, ProxyError> {
    match pool.send(req).await {
        Ok(resp) => Ok(resp.map(Body::Upstream)),
        Err(e) => Err(ProxyError::from(e)),
    }
}

fn with_status(mut resp: Response<Body>, status: &'static str) -> Response<Body> {
    resp.headers_mut()
        .insert(CACHE_STATUS, HeaderValue::from_static(status));
    resp
}

/// What the store did with a request.
enum Stored {
    /// Answered (from the store, or after revalidating with the origin).
    Answered(Result<Response<Body>, ProxyError>),
    /// Nothing usable: the request, back for the origin.
    Miss(Request<Body>),
}

/// What the client asked, kept after the request itself went upstream.
struct Asked {
    method: Method,
    headers: HeaderMap,
}

impl Cache {
    /// Serves `req` (already fit for the upstream) for the cache key `key`.
    pub async fn serve(
        self: &Arc<Self>,
        pool: &Upstream,
        key: String,
        req: Request<Body>,
        route: RouteCache,
    ) -> Result<Response<Body>, ProxyError> {
        let method = req.method().clone();
        if method == Method::GET && req.headers().contains_key(RANGE) {
            return self.ranged(pool, &key, req).await;
        }
        if !(method == Method::GET || method == Method::HEAD) || req.headers().contains_key(RANGE) {
            return self.pass(pool, &key, req).await;
        }
        let found = self.lookup(&key, req.headers()).await;
        // A stored response that needs the origin is as good as none here.
        let only_if_cached = CacheControl::parse(req.headers()).only_if_cached;
        let req = match self
            .from_store(pool, &key, req, &found, route, only_if_cached)
            .await
        {
            Stored::Answered(answer) => return answer,
            Stored::Miss(req) => req,
        };
        if only_if_cached {
            self.metrics.outcome(Outcome::Miss);
            let mut resp = Response::new(Body::full("not in cache (only-if-cached)\n".into()));
            *resp.status_mut() = StatusCode::GATEWAY_TIMEOUT;
            return Ok(with_status(resp, "edge; detail=only-if-cached"));
        }
        if method == Method::HEAD {
            self.metrics.outcome(Outcome::Miss);
            return Ok(with_status(send(pool, req).await?, "edge; fwd=miss"));
        }
        self.fetch(pool, key, req, found, route).await
    }

    /// Methods the cache does not answer: unsafe ones invalidate their target
    /// when they succeed; others (and Range requests) just go through.
    pub(super) async fn pass(
        &self,
        pool: &Upstream,
        key: &str,
        req: Request<Body>,
    ) -> Result<Response<Body>, ProxyError> {
        self.metrics.outcome(Outcome::Bypass);
        if !policy::invalidates(req.method()) {
            return Ok(with_status(send(pool, req).await?, "edge; fwd=bypass"));
        }
        let resp = send(pool, req).await?;
        if resp.status().is_success() || resp.status().is_redirection() {
            self.invalidate(key, resp.headers()).await;
        }
        Ok(with_status(resp, "edge; fwd=method"))
    }

    /// Answers from the stored entry when the rules allow: fresh, acceptably
    /// stale, stale-while-revalidate, or after revalidating it.
    async fn from_store(
        self: &Arc<Self>,
        pool: &Upstream,
        key: &str,
        req: Request<Body>,
        found: &Lookup,
        route: RouteCache,
        only_if_cached: bool,
    ) -> Stored {
        let Some((entry, layer)) = &found.entry else {
            return Stored::Miss(req);
        };
        let now = unix_now();
        let method = req.method().clone();
        let judged =
            entry
                .freshness()
                .decide(entry.times, &CacheControl::parse(req.headers()), now);
        let (outcome, status) = match (judged, layer) {
            (Use::Fresh, Layer::L1) => (Outcome::HitL1, "edge; hit; detail=l1"),
            (Use::Fresh, Layer::L2) => (Outcome::HitL2, "edge; hit; detail=l2"),
            (Use::Stale, _) => (Outcome::Stale, "edge; hit; detail=stale"),
            (Use::StaleWhileRevalidate, _) => {
                self.refresh_in_background(pool, key, &req, entry, found.vary.clone(), route);
                (Outcome::Stale, "edge; hit; detail=stale-while-revalidate")
            }
            (Use::Revalidate, _) if method == Method::GET && !only_if_cached => {
                // One revalidation per key at a time; the others wait for it.
                let leader = match self.lead_or_wait(key, &req).await {
                    Ok(leader) => leader,
                    Err(hit) => return Stored::Answered(Ok(hit)),
                };
                let (entry, vary) = (Arc::clone(entry), found.vary.clone());
                let key = key.to_owned();
                let answer = self
                    .revalidate(pool, key, req, entry, vary, route, leader)
                    .await;
                return Stored::Answered(answer);
            }
            (Use::Revalidate, _) => return Stored::Miss(req),
        };
        self.metrics.outcome(outcome);
        Stored::Answered(Ok(respond(entry, req.headers(), &method, now, status)))
    }

    /// A miss: one request per key goes to the origin, the others wait for it.
    async fn fetch(
        self: &Arc<Self>,
        pool: &Upstream,
        key: String,
        req: Request<Body>,
        found: Lookup,
        route: RouteCache,
    ) -> Result<Response<Body>, ProxyError> {
        let leader = match self.lead_or_wait(&key, &req).await {
            Ok(leader) => leader,
            Err(hit) => return Ok(hit),
        };
        self.metrics.outcome(Outcome::Miss);
        let asked = Asked {
            method: req.method().clone(),
            headers: req.headers().clone(),
        };
        let request_time = unix_now();
        let resp = send(pool, req).await?;
        let status = if found.vary.is_some() {
            "edge; fwd=vary-miss"
        } else {
            "edge; fwd=miss"
        };
        Ok(self.keep(
            &key,
            &asked,
            resp,
            request_time,
            found.vary,
            leader,
            route,
            status,
        ))
    }

    /// Leadership of the origin request for `key`; or, when another request
    /// is already on it, a wait for it and then its stored answer (`Err`). `None`
    /// when the request must go alone: an uncacheable key, or nothing usable
    /// stored after the wait.
    async fn lead_or_wait(
        &self,
        key: &str,
        req: &Request<Body>,
    ) -> Result<Option<Leader>, Response<Body>> {
        if self.uncacheable.contains_key(key) {
            return Ok(None);
        }
        match self.coalescer.join(key) {
            Role::Leader(mut l) => {
                // A fetch that finished between our lookup and `join` has left
                // its entry in L1 and its leadership behind: look once more.
                if let Some(hit) = self.fresh_hit(key, req, false).await {
                    return Err(hit);
                }
                if let Some(l2) = &self.l2 {
                    if let Some(hit) = self.across_edges(l2, key, req, &mut l).await {
                        return Err(hit);
                    }
                }
                Ok(Some(l))
            }
            Role::Follower(rx) => {
                self.metrics.coalesced();
                if coalesce::wait(rx, self.coalesce_timeout).await {
                    if let Some(hit) = self.fresh_hit(key, req, true).await {
                        return Err(hit);
                    }
                }
                Ok(None)
            }
        }
    }

    /// Coalescing across edges: a short Redis lock per key. The edge that takes
    /// it fetches (and drops the lock when done); the others poll L2 for the
    /// entry while the lock is held, up to its TTL. Redis trouble means no lock
    /// and no wait.
    async fn across_edges(
        &self,
        l2: &Arc<L2>,
        key: &str,
        req: &Request<Body>,
        leader: &mut Leader,
    ) -> Option<Response<Body>> {
        let lock = key::lock_key(key);
        let ttl = self.coalesce_timeout.min(EDGE_LOCK_MAX);
        match l2.lock(&lock, ttl).await? {
            true => {
                let l2 = Arc::clone(l2);
                leader.on_release(move || {
                    if let Ok(rt) = tokio::runtime::Handle::try_current() {
                        rt.spawn(async move { l2.del(&lock).await });
                    }
                });
                None
            }
            false => {
                self.metrics.coalesced();
                let end = tokio::time::Instant::now() + ttl;
                while tokio::time::Instant::now() < end {
                    tokio::time::sleep(EDGE_POLL).await;
                    if let Some(hit) = self.fresh_hit(key, req, true).await {
                        return Some(hit);
                    }
                    if l2.locked(&lock).await != Some(true) {
                        return None;
                    }
                }
                None
            }
        }
    }

    /// A fresh stored answer for `req`, if there is one now.
    async fn fresh_hit(&self, key: &str, req: &Request<Body>, l2: bool) -> Option<Response<Body>> {
        let found = self.lookup_in(key, req.headers(), l2).await;
        let (entry, layer) = found.entry?;
        let now = unix_now();
        let judged =
            entry
                .freshness()
                .decide(entry.times, &CacheControl::parse(req.headers()), now);
        if judged != Use::Fresh {
            return None;
        }
        let (outcome, status) = match layer {
            Layer::L1 => (Outcome::HitL1, "edge; hit; detail=l1"),
            Layer::L2 => (Outcome::HitL2, "edge; hit; detail=l2"),
        };
        self.metrics.outcome(outcome);
        Some(respond(&entry, req.headers(), req.method(), now, status))
    }

    /// Wraps a fresh origin response so it is stored while it streams, when the
    /// rules allow and its size fits.
    #[allow(clippy::too_many_arguments)]
    fn keep(
        self: &Arc<Self>,
        key: &str,
        asked: &Asked,
        resp: Response<Body>,
        request_time: u64,
        seen: Option<Arc<VaryList>>,
        leader: Option<Leader>,
        route: RouteCache,
        status: &'static str,
    ) -> Response<Body> {
        let allowed = policy::storable(
            &asked.method,
            &asked.headers,
            resp.status(),
            resp.headers(),
            route.set_cookie,
        )
        .and_then(|()| {
            // The operator's allow-list narrows what RFC 9111 would store.
            let listed = route.statuses.contains(resp.status().as_u16());
            if listed {
                Ok(())
            } else {
                Err(policy::NotStored::Status)
            }
        });
        let names = policy::vary_names(resp.headers()).unwrap_or_default();
        let declared = resp
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let bound = self.store_bound();
        if let Err(why) = allowed {
            tracing::trace!(key, ?why, "cache: not stored");
            self.uncacheable.insert(key.to_owned(), ());
            return with_status(resp, status);
        }
        self.uncacheable.invalidate(key);
        if declared.is_some_and(|n| n > bound) {
            return with_status(resp, status);
        }
        let (mut parts, body) = resp.into_parts();
        let Body::Upstream(inner) = body else {
            return with_status(Response::from_parts(parts, body), status);
        };
        let mut headers = parts.headers.clone();
        crate::wire::strip_hop_by_hop(&mut headers);
        headers.remove(SET_COOKIE);
        headers.remove(CACHE_STATUS);
        let entry = Entry {
            url: key.to_owned(),
            status: parts.status,
            headers,
            body: Default::default(),
            times: Times {
                request_time,
                response_time: unix_now(),
            },
            stored_at_ms: unix_now_ms(),
            vary: vary_values(&names, &asked.headers),
            fresh: Default::default(),
        };
        let pending = Pending {
            cache: Arc::clone(self),
            key: key.to_owned(),
            entry,
            names,
            seen,
            leader,
        };
        let tee = Tee::new(inner, bound as usize, pending);
        let stored = match status {
            "edge; fwd=miss" => "edge; fwd=miss; stored",
            "edge; fwd=vary-miss" => "edge; fwd=vary-miss; stored",
            _ => "edge; fwd=stale; stored",
        };
        parts
            .headers
            .insert(CACHE_STATUS, HeaderValue::from_static(stored));
        Response::from_parts(parts, Body::boxed(tee))
    }

    /// Asks the origin whether a stale entry still holds (conditional request);
    /// a 304 refreshes it, an error may be answered with it (stale-if-error).
    /// `leader` is released once the outcome is stored (or known not to be).
    #[allow(clippy::too_many_arguments)]
    async fn revalidate(
        self: &Arc<Self>,
        pool: &Upstream,
        key: String,
        mut req: Request<Body>,
        entry: Arc<Entry>,
        vary: Option<Arc<VaryList>>,
        route: RouteCache,
        leader: Option<Leader>,
    ) -> Result<Response<Body>, ProxyError> {
        let asked = Asked {
            method: req.method().clone(),
            headers: req.headers().clone(),
        };
        let h = req.headers_mut();
        h.remove(IF_NONE_MATCH);
        h.remove(IF_MODIFIED_SINCE);
        if let Some(etag) = entry.headers.get(ETAG) {
            h.insert(IF_NONE_MATCH, etag.clone());
        }
        if let Some(lm) = entry.headers.get(LAST_MODIFIED) {
            h.insert(IF_MODIFIED_SINCE, lm.clone());
        }
        let (uri, version) = (req.uri().clone(), req.version());
        let request_time = unix_now();
        let sent = send(pool, req).await;
        let now = unix_now();
        let stale_ok = || {
            policy::stale_if_error(
                entry.status.as_u16(),
                &entry.headers,
                entry.times,
                &asked.headers,
                now,
            )
        };
        let resp = match sent {
            Ok(resp)
                if resp.status() == StatusCode::NOT_MODIFIED
                    && !selects(&entry.headers, resp.headers()) =>
            {
                // The 304 names another representation (RFC 9111 4.3.4):
                // nothing stored can be freshened, so fetch it whole.
                let mut again = Request::new(Body::Empty);
                *again.uri_mut() = uri;
                *again.version_mut() = version;
                *again.headers_mut() = asked.headers.clone();
                again.headers_mut().remove(IF_NONE_MATCH);
                again.headers_mut().remove(IF_MODIFIED_SINCE);
                send(pool, again).await?
            }
            Ok(resp) if resp.status() == StatusCode::NOT_MODIFIED => {
                self.metrics.outcome(Outcome::Revalidated);
                let merged = merge_304(&entry, resp.headers(), request_time, now);
                let names = policy::vary_names(&merged.headers).unwrap_or_default();
                let out = respond(
                    &merged,
                    &asked.headers,
                    &asked.method,
                    now,
                    "edge; fwd=stale; fwd-status=304",
                );
                self.store(&key, merged, names, vary, leader).await;
                return Ok(out);
            }
            Ok(resp) if !(resp.status().is_server_error() && stale_ok()) => resp,
            Err(e) if !stale_ok() => return Err(e),
            // A 5xx or a failure, and the entry may stand in for it.
            Ok(_) | Err(_) => {
                self.metrics.outcome(Outcome::Stale);
                let status = "edge; hit; fwd=stale; detail=stale-if-error";
                return Ok(respond(&entry, &asked.headers, &asked.method, now, status));
            }
        };
        // A new response, not a freshened one: stored (or not) as on a miss.
        self.metrics.outcome(Outcome::Miss);
        let status = "edge; fwd=stale";
        Ok(self.keep(
            &key,
            &asked,
            resp,
            request_time,
            vary,
            leader,
            route,
            status,
        ))
    }

    /// stale-while-revalidate: one background revalidation per key at a time.
    fn refresh_in_background(
        self: &Arc<Self>,
        pool: &Upstream,
        key: &str,
        req: &Request<Body>,
        entry: &Arc<Entry>,
        vary: Option<Arc<VaryList>>,
        route: RouteCache,
    ) {
        let Some(leader) = self.coalescer.try_lead(key) else {
            return;
        };
        let mut copy = Request::new(Body::Empty);
        *copy.method_mut() = Method::GET;
        *copy.uri_mut() = req.uri().clone();
        *copy.version_mut() = req.version();
        *copy.headers_mut() = req.headers().clone();
        let (this, pool, key, entry) = (
            Arc::clone(self),
            Arc::clone(pool),
            key.to_owned(),
            Arc::clone(entry),
        );
        tokio::spawn(async move {
            match this
                .revalidate(&pool, key, copy, entry, vary, route, None)
                .await
            {
                Ok(resp) => {
                    // Reading the body to its end is what stores a new copy.
                    let mut body = resp.into_body();
                    while let Some(frame) = body.frame().await {
                        if frame.is_err() {
                            break;
                        }
                    }
                }
                Err(e) => tracing::debug!(error = %e, "cache: background revalidation failed"),
            }
            drop(leader);
        });
    }
}

/// Whether a 304 is about the stored response: a strong ETag in it must be the
/// stored one (RFC 9111 4.3.4); without one, it is taken as ours.
fn selects(stored: &HeaderMap, fresh: &HeaderMap) -> bool {
    match (fresh.get(ETAG), stored.get(ETAG)) {
        (Some(new), _) if new.as_bytes().starts_with(b"W/") => true,
        (Some(new), Some(old)) => new == old,
        (Some(_), None) => false,
        (None, _) => true,
    }
}

/// The stored entry updated with a 304's header fields (RFC 9111 3.2, 4.3.4).
fn merge_304(entry: &Entry, fresh: &HeaderMap, request_time: u64, response_time: u64) -> Entry {
    let mut merged = entry.clone();
    let mut headers = fresh.clone();
    crate::wire::strip_hop_by_hop(&mut headers);
    for name in headers.keys() {
        if name != CONTENT_LENGTH && name != SET_COOKIE && name != CACHE_STATUS {
            merged.headers.remove(name);
        }
    }
    for (name, value) in &headers {
        if name != CONTENT_LENGTH && name != SET_COOKIE && name != CACHE_STATUS {
            merged.headers.append(name, value.clone());
        }
    }
    merged.times = Times {
        request_time,
        response_time,
    };
    merged.fresh = Default::default();
    merged.stored_at_ms = unix_now_ms();
    merged
}

/// A response from a stored entry, with Age and Cache-Status; a 304 when the
/// client's own conditional matches it.
pub(super) fn respond(
    entry: &Entry,
    req: &HeaderMap,
    method: &Method,
    now: u64,
    status: &'static str,
) -> Response<Body> {
    let age = entry.freshness().current_age(entry.times, now);
    let not_modified = entry.status == StatusCode::OK && client_validator_matches(entry, req);
    let mut resp = if not_modified || *method == Method::HEAD {
        Response::new(Body::Empty)
    } else {
        Response::new(Body::full(entry.body.clone()))
    };
    *resp.version_mut() = Version::HTTP_11;
    if not_modified {
        *resp.status_mut() = StatusCode::NOT_MODIFIED;
        let h = resp.headers_mut();
        for (name, value) in &entry.headers {
            if name != CONTENT_LENGTH {
                h.append(name, value.clone());
            }
        }
    } else {
        *resp.status_mut() = entry.status;
        *resp.headers_mut() = entry.headers.clone();
    }
    let h = resp.headers_mut();
    h.insert(AGE, HeaderValue::from(age));
    h.insert(CACHE_STATUS, HeaderValue::from_static(status));
    resp
}

/// If-None-Match (weak comparison), else If-Modified-Since (RFC 9110 13.1).
fn client_validator_matches(entry: &Entry, req: &HeaderMap) -> bool {
    if req.contains_key(IF_NONE_MATCH) {
        let Some(etag) = entry.headers.get(ETAG).and_then(|v| v.to_str().ok()) else {
            return false;
        };
        let weak = |t: &str| t.trim().trim_start_matches("W/").to_owned();
        return req
            .get_all(IF_NONE_MATCH)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim() == "*" || weak(t) == weak(etag));
    }
    let since = req.get(IF_MODIFIED_SINCE).and_then(policy::http_date);
    // Without Last-Modified, the stored response's Date stands in (RFC 9111 4.3.2).
    let modified = entry
        .headers
        .get(LAST_MODIFIED)
        .or_else(|| entry.headers.get(http::header::DATE))
        .and_then(policy::http_date);
    matches!((since, modified), (Some(s), Some(m)) if m <= s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn etag(v: Option<&'static str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(v) = v {
            h.insert(ETAG, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn a_304_selects_the_stored_response_by_its_strong_etag() {
        assert!(selects(&etag(Some("\"a\"")), &etag(Some("\"a\""))));
        assert!(!selects(&etag(Some("\"a\"")), &etag(Some("\"b\""))));
        assert!(!selects(&etag(None), &etag(Some("\"b\""))));
        assert!(selects(&etag(Some("\"a\"")), &etag(None)));
        assert!(selects(&etag(Some("\"a\"")), &etag(Some("W/\"b\""))));
    }
}
